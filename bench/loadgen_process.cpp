#include "loadgen_process.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <stdexcept>
#include <thread>

#include "loadgen_net.hpp"

namespace loadgen {

namespace {

using namespace std::chrono_literals;

std::int64_t monotonic_ns() {
    timespec now{};
    ::clock_gettime(CLOCK_MONOTONIC, &now);
    return static_cast<std::int64_t>(now.tv_sec) * 1'000'000'000 + now.tv_nsec;
}

// Every process whose parent is `root` or one of its descendants, from /proc (this kernel has
// no /proc/PID/task/TID/children).
std::set<pid_t> descendants_of(pid_t root) {
    std::map<pid_t, std::vector<pid_t>> children;
    if (DIR* proc = ::opendir("/proc")) {
        while (const dirent* entry = ::readdir(proc)) {
            const pid_t pid = static_cast<pid_t>(std::atoi(entry->d_name));
            if (pid <= 0) {
                continue;
            }
            std::ifstream stat("/proc/" + std::string(entry->d_name) + "/stat");
            std::string text;
            std::getline(stat, text);
            const auto close_paren = text.rfind(')');
            if (close_paren == std::string::npos || close_paren + 4 >= text.size()) {
                continue;
            }
            // After "pid (comm) " come the state and the parent's pid.
            const pid_t parent = static_cast<pid_t>(std::atoi(text.c_str() + close_paren + 4));
            children[parent].push_back(pid);
        }
        ::closedir(proc);
    }
    std::set<pid_t> found;
    std::vector<pid_t> pending{root};
    while (!pending.empty()) {
        const pid_t next = pending.back();
        pending.pop_back();
        for (const pid_t child : children[next]) {
            if (found.insert(child).second) {
                pending.push_back(child);
            }
        }
    }
    return found;
}

bool alive(pid_t pid) {
    return ::kill(pid, 0) == 0 || errno != ESRCH;
}

}  // namespace

process_table::process_table() {
    ::prctl(PR_SET_CHILD_SUBREAPER, 1);
    void* page = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) {
        throw std::runtime_error(std::string("mmap: ") + std::strerror(errno));
    }
    exec_ns_ = static_cast<volatile std::int64_t*>(page);
}

process_table::~process_table() {
    for (auto& [pid, status] : started_) {
        if (!status) {
            stop(pid, 2.0);
        }
    }
    reap();
}

void process_table::reap() {
    for (;;) {
        int status = 0;
        const pid_t pid = ::waitpid(-1, &status, WNOHANG);
        if (pid <= 0) {
            return;
        }
        const auto found = started_.find(pid);
        if (found != started_.end()) {
            found->second = status;
        }
    }
}

bool process_table::running(pid_t pid) {
    reap();
    const auto found = started_.find(pid);
    return found != started_.end() && !found->second;
}

spawn_result process_table::spawn(std::uint16_t port, const std::string& log_path,
                                  const std::vector<std::string>& argv, double timeout) {
    spawn_result result;
    if (argv.empty() || argv[0].empty() || argv[0][0] != '/') {
        result.error = "the program must be an absolute path";
        return result;
    }
    // Everything the child needs is prepared before fork(): after it, only system calls.
    std::vector<char*> args;
    for (const auto& arg : argv) {
        args.push_back(const_cast<char*>(arg.c_str()));
    }
    args.push_back(nullptr);
    const int log_fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    const int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (log_fd < 0 || null_fd < 0) {
        result.error = "cannot open " + log_path + ": " + std::strerror(errno);
        return result;
    }
    const pid_t parent = ::getpid();
    *exec_ns_ = 0;

    const auto fork_ns = monotonic_ns();
    const pid_t pid = ::fork();
    if (pid == 0) {
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (::getppid() != parent) {
            ::_exit(127);
        }
        ::dup2(null_fd, 0);
        ::dup2(log_fd, 1);
        ::dup2(log_fd, 2);
        *exec_ns_ = monotonic_ns();
        ::execv(args[0], args.data());
        ::_exit(127);
    }
    ::close(log_fd);
    ::close(null_fd);
    if (pid < 0) {
        result.error = std::string("fork: ") + std::strerror(errno);
        return result;
    }
    started_[pid] = std::nullopt;
    result.pid = pid;

    const auto give_up = monotonic_ns() + static_cast<std::int64_t>(timeout * 1e9);
    for (;;) {
        const int fd = connect_loopback(port);
        const auto now = monotonic_ns();
        if (fd >= 0) {
            ::close(fd);
            result.ready_us = static_cast<double>(now - *exec_ns_) / 1e3;
            result.fork_ready_us = static_cast<double>(now - fork_ns) / 1e3;
            return result;
        }
        if (!running(pid)) {
            const int status = *started_[pid];
            result.error = "exited before accepting (status " +
                           std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : -1) + ")";
            return result;
        }
        if (now > give_up) {
            stop(pid, 1.0);
            result.error = "not accepting within the timeout";
            return result;
        }
        // Coarse enough to leave the CPU to the starting program on a small machine, fine
        // enough (0.1 ms) against a target of milliseconds.
        std::this_thread::sleep_for(100us);
    }
}

stop_result process_table::stop(pid_t pid, double grace) {
    stop_result result;
    if (!running(pid)) {
        result.error = "not a running process started here";
        return result;
    }
    const auto left_behind = descendants_of(pid);
    const auto start = clock::now();
    const auto grace_time =
        std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(grace));

    ::kill(pid, SIGTERM);
    while (running(pid) && clock::now() - start < grace_time) {
        std::this_thread::sleep_for(1ms);
    }
    if (running(pid)) {
        ::kill(pid, SIGKILL);
        result.killed = true;
        while (running(pid)) {
            std::this_thread::sleep_for(1ms);
        }
    }
    result.status = *started_[pid];
    result.seconds = seconds(clock::now() - start);

    // Orphans are re-parented to this process (the subreaper), so reap() collects them.
    for (const pid_t child : left_behind) {
        if (alive(child)) {
            ::kill(child, SIGTERM);
            ++result.descendants_ended;
        }
    }
    const auto deadline = clock::now() + 2s;
    for (const pid_t child : left_behind) {
        while (alive(child) && clock::now() < deadline) {
            ::waitpid(child, nullptr, WNOHANG);
            std::this_thread::sleep_for(1ms);
        }
        if (alive(child)) {
            ::kill(child, SIGKILL);
        }
    }
    reap();
    return result;
}

}  // namespace loadgen
