#include "buffer_pool.hpp"

namespace tcptunnel {

std::unique_ptr<std::byte[]> buffer_pool::take() {
    if (spare_.empty()) {
        return std::make_unique_for_overwrite<std::byte[]>(buffer_size);
    }
    auto buffer = std::move(spare_.back());
    spare_.pop_back();
    return buffer;
}

void buffer_pool::give_back(std::unique_ptr<std::byte[]> buffer) {
    if (buffer && spare_.size() < max_spare) {
        spare_.push_back(std::move(buffer));
    }
}

}  // namespace tcptunnel
