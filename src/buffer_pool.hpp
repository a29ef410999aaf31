// Relay buffers, reused across connections so the steady state allocates nothing.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

namespace tcptunnel {

// A worker's free buffers. A pump holds a buffer only while bytes are in flight and gives it
// back as soon as its source runs dry, so an idle connection holds none.
class buffer_pool {
  public:
    static constexpr std::size_t buffer_size = 64 * 1024;
    static constexpr std::size_t max_spare = 32;

    class lease {
      public:
        explicit lease(buffer_pool& pool) : pool_(&pool), data_(pool.take()) {}
        lease(const lease&) = delete;
        lease& operator=(const lease&) = delete;
        ~lease() { pool_->give_back(std::move(data_)); }

        std::byte* data() { return data_.get(); }
        static constexpr std::size_t size() { return buffer_size; }

      private:
        buffer_pool* pool_;
        std::unique_ptr<std::byte[]> data_;
    };

  private:
    std::unique_ptr<std::byte[]> take();
    void give_back(std::unique_ptr<std::byte[]> buffer);

    std::vector<std::unique_ptr<std::byte[]>> spare_;
};

}  // namespace tcptunnel
