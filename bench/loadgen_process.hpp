// The tunnel processes under test: started by the load generator so that the time from exec to
// the first accepted connection is taken in one place, and ended by their PIDs, children included.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace loadgen {

struct spawn_result {
    pid_t pid = -1;
    double ready_us = 0;       // from just before execve() to the first accepted connect()
    double fork_ready_us = 0;  // from just before fork(), for comparison
    std::string error;         // empty when the process is up and accepting
};

struct stop_result {
    int status = -1;      // as waitpid() reports it
    bool killed = false;  // SIGTERM was not enough within the grace time
    double seconds = 0;
    std::size_t descendants_ended = 0;  // children it left behind (socat's per-connection ones)
    std::string error;
};

class process_table {
  public:
    // Makes this process the reaper of its descendants' orphans.
    process_table();

    // Ends every process still running, as stop() does.
    ~process_table();

    process_table(const process_table&) = delete;
    process_table& operator=(const process_table&) = delete;

    // Starts argv (argv[0] an absolute path) with stdin from /dev/null and stdout and stderr
    // appended to log_path, then connects to 127.0.0.1:port until it accepts, the process exits,
    // or timeout seconds pass (then it is ended). The child dies with this process.
    spawn_result spawn(std::uint16_t port, const std::string& log_path,
                       const std::vector<std::string>& argv, double timeout);

    // Sends SIGTERM to a process started here, SIGKILL after grace seconds, then ends the
    // descendants it left behind the same way.
    stop_result stop(pid_t pid, double grace);

  private:
    void reap();
    bool running(pid_t pid);

    std::map<pid_t, std::optional<int>> started_;  // pid -> status once reaped
    volatile std::int64_t* exec_ns_ = nullptr;     // shared with the child across fork()
};

}  // namespace loadgen
