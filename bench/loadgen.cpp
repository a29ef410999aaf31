// tcptunnel_loadgen: the benchmark's load generator and upstream server in one process.
//
// It starts an echo/sink/source server on 127.0.0.1, prints one JSON line with its port, then reads
// commands from stdin, one a line, and answers each with one JSON line on stdout. At end of input
// it ends every process it started. bench/suite.py drives it; the commands are:
//   throughput PORT up|down STREAMS SECONDS
//   churn PORT CONCURRENCY SECONDS SIZE
//   ping PORT SIZE COUNT WARMUP TIME_LIMIT
//   hold PORT COUNT          release
//   spawn PORT LOG_FILE TIMEOUT PROGRAM ARG...      stop PID GRACE
//   quit
// Every answer carries "cpu_s": the CPU seconds this process (client and server) used for it.
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include <cstdio>
#include <exception>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "loadgen_client.hpp"
#include "loadgen_net.hpp"
#include "loadgen_process.hpp"
#include "loadgen_server.hpp"

namespace {

using namespace loadgen;

// One flat JSON object, built field by field.
class json_line {
  public:
    json_line& add(const std::string& key, double value) {
        char text[64];
        std::snprintf(text, sizeof text, "%.9g", value);
        return raw(key, text);
    }

    json_line& add(const std::string& key, const std::string& value) {
        std::string quoted = "\"";
        for (const char c : value) {
            if (c == '"' || c == '\\') {
                quoted += '\\';
                quoted += c;
            } else if (static_cast<unsigned char>(c) < 0x20) {
                quoted += ' ';
            } else {
                quoted += c;
            }
        }
        return raw(key, quoted + "\"");
    }

    json_line& raw(const std::string& key, const std::string& value) {
        text_ += text_.empty() ? "{" : ",";
        text_ += "\"" + key + "\":" + value;
        return *this;
    }

    std::string str() const { return text_.empty() ? "{}" : text_ + "}"; }

  private:
    std::string text_;
};

double cpu_seconds() {
    rusage usage{};
    ::getrusage(RUSAGE_SELF, &usage);
    const auto to_seconds = [](const timeval& t) {
        return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6;
    };
    return to_seconds(usage.ru_utime) + to_seconds(usage.ru_stime);
}

std::string kinds_json(const std::map<std::string, std::uint64_t>& kinds) {
    json_line object;
    for (const auto& [kind, count] : kinds) {
        object.add(kind, static_cast<double>(count));
    }
    return object.str();
}

json_line run_command(const std::vector<std::string>& words, upstream_server& server,
                      process_table& processes, connection_holder& holder) {
    const auto& name = words[0];
    const auto number = [&](std::size_t i) { return std::stod(words.at(i)); };
    const auto port = [&](std::size_t i) { return static_cast<std::uint16_t>(number(i)); };
    json_line out;

    if (name == "throughput") {
        const auto result = run_throughput(server, port(1), words.at(2) == "up",
                                           static_cast<int>(number(3)), number(4));
        out.add("bytes", static_cast<double>(result.bytes))
            .add("seconds", result.seconds)
            .add("errors", static_cast<double>(result.errors))
            .add("first_error", result.first_error);
    } else if (name == "churn") {
        const auto result = run_churn(port(1), static_cast<int>(number(2)), number(3),
                                      static_cast<std::size_t>(number(4)));
        out.add("completed", static_cast<double>(result.completed))
            .add("drained", static_cast<double>(result.drained))
            .add("errors", static_cast<double>(result.errors))
            .raw("error_kinds", kinds_json(result.error_kinds))
            .add("seconds", result.seconds)
            .add("p50_us", result.p50_us)
            .add("p99_us", result.p99_us);
    } else if (name == "ping") {
        const auto result =
            run_ping(port(1), static_cast<std::size_t>(number(2)), static_cast<int>(number(3)),
                     static_cast<int>(number(4)), number(5));
        out.add("rounds", static_cast<double>(result.rounds))
            .add("p50_us", result.p50_us)
            .add("p99_us", result.p99_us)
            .add("p999_us", result.p999_us)
            .add("mean_us", result.mean_us)
            .add("max_us", result.max_us)
            .add("error", result.error);
    } else if (name == "hold") {
        const auto result = holder.open(port(1), static_cast<int>(number(2)));
        out.add("held", static_cast<double>(result.held))
            .add("errors", static_cast<double>(result.errors))
            .add("first_error", result.first_error)
            .add("seconds", result.seconds)
            .add("server_connections", static_cast<double>(server.open_connections()));
    } else if (name == "release") {
        out.add("released", static_cast<double>(holder.release()));
    } else if (name == "spawn") {
        const std::vector<std::string> argv(words.begin() + 4, words.end());
        const auto result = processes.spawn(port(1), words.at(2), argv, number(3));
        out.add("pid", result.pid)
            .add("ready_us", result.ready_us)
            .add("fork_ready_us", result.fork_ready_us)
            .add("error", result.error);
    } else if (name == "stop") {
        const auto result = processes.stop(static_cast<pid_t>(number(1)), number(2));
        out.add("status", result.status)
            .add("exited", WIFEXITED(result.status) ? WEXITSTATUS(result.status) : -1)
            .add("signal", WIFSIGNALED(result.status) ? WTERMSIG(result.status) : 0)
            .add("killed", result.killed ? 1 : 0)
            .add("seconds", result.seconds)
            .add("descendants_ended", static_cast<double>(result.descendants_ended))
            .add("error", result.error);
    } else {
        out.add("error", "unknown command " + name);
    }
    return out;
}

}  // namespace

int main(int argc, char**) {
    if (argc > 1) {
        std::fputs("usage: tcptunnel_loadgen (commands on stdin; see bench/README.md)\n", stderr);
        return 2;
    }
    ::signal(SIGPIPE, SIG_IGN);
    try {
        // 1000 held connections take 2000 descriptors here; the tunnels started here inherit it.
        const auto open_files = raise_open_files_limit();
        upstream_server server;
        process_table processes;
        connection_holder holder;
        std::cout << json_line()
                         .add("upstream_port", server.port())
                         .add("open_files_limit", static_cast<double>(open_files))
                         .str()
                  << std::endl;

        std::string line;
        while (std::getline(std::cin, line)) {
            std::istringstream stream(line);
            std::vector<std::string> words;
            for (std::string word; stream >> word;) {
                words.push_back(word);
            }
            if (words.empty()) {
                continue;
            }
            if (words[0] == "quit") {
                break;
            }
            const double cpu_before = cpu_seconds();
            json_line answer;
            try {
                answer = run_command(words, server, processes, holder);
            } catch (const std::exception& error) {
                answer = json_line().add("error", std::string("bad command: ") + error.what());
            }
            answer.add("cpu_s", cpu_seconds() - cpu_before);
            std::cout << answer.str() << std::endl;
        }
        return 0;
    } catch (const std::exception& error) {
        std::fprintf(stderr, "tcptunnel_loadgen: %s\n", error.what());
        return 1;
    }
}
