// Real crashes: a forked child is SIGKILLed at random instants while it
// commits, creates a segment, adds entries, or grows keys and the segment;
// the parent then recovers. KEEPSAKE_KILLS sets how many kills each test
// makes (default 200 for the commit and growth tests, 100 for creation and
// entry addition).
#include <catch2/catch.hpp>

#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <cereal/types/vector.hpp>

#include <fcntl.h>
#include <sys/stat.h>

#include "support.hpp"

namespace crash_tests {  // a unity build's sources keep their names apart (tests/CMakeLists.txt)

using keepsake::keeper;
using keepsake::open_outcome;
using keepsake::segment;
using test_support::blob;
using test_support::shm_dir;

namespace {

struct child_report {
    std::atomic<int> ready{0};
    std::atomic<std::uint64_t> last_committed{0};  // generation (or index) the child saw complete
};

std::mt19937_64& rng() {
    static std::mt19937_64 engine(std::random_device{}());
    return engine;
}

void sleep_random_us(unsigned most) {
    std::uniform_int_distribution<unsigned> pick(0, most);
    std::this_thread::sleep_for(std::chrono::microseconds(pick(rng())));
}

template <std::size_t N>
[[noreturn]] void commit_forever(const shm_dir& dir, child_report& report) {
    segment s("commits", dir.options(1u << 20, 8));
    keeper<blob<N>> k(s, "state");
    static blob<N> next;
    report.ready.store(1, std::memory_order_release);
    for (;;) {
        blob<N>::make(next, k.generation() + 1);
        const std::uint64_t generation = k.commit(next);
        report.last_committed.store(generation, std::memory_order_release);
    }
}

struct kill_stats {
    int kills = 0;
    int mid_commit = 0;        // kills that cut a commit short (an unpublished slot)
    std::uint64_t last_generation = 0;
};

template <std::size_t N>
kill_stats kill_committer_repeatedly(int kills, unsigned most_delay_us) {
    shm_dir dir;
    auto* report = test_support::shared_anonymous<child_report>();
    kill_stats stats;
    static blob<N> restored;
    for (int round = 0; round < kills; ++round) {
        report->ready.store(0);
        const pid_t child = test_support::fork_child([&] { commit_forever<N>(dir, *report); });
        REQUIRE(test_support::wait_ready(report->ready, child));
        sleep_random_us(most_delay_us);
        test_support::kill_and_reap(child);
        const std::uint64_t reported = report->last_committed.load(std::memory_order_acquire);

        segment s("commits", dir.options(1u << 20, 8));
        REQUIRE(s.outcome() == open_outcome::reopened_after_crash);
        keeper<blob<N>> k(s, "state");
        auto info = k.restore_into(restored);
        if (reported == 0 && !info) continue;  // killed before its first commit
        REQUIRE(info.has_value());
        // The state is one that was committed, whole: every word agrees with
        // the generation stored in it, and that is the generation reported.
        REQUIRE(restored.consistent());
        REQUIRE(restored.generation == info->generation);
        // Nothing whose commit returned is lost, and nothing goes back.
        REQUIRE(info->generation >= reported);
        REQUIRE(info->generation <= reported + 1);
        REQUIRE(info->generation >= stats.last_generation);
        stats.last_generation = info->generation;
        REQUIRE(info->skipped_slots == 0);  // a cut-short commit is unpublished, not invalid
        stats.mid_commit += s.entries().at(0).unpublished_slots != 0 ? 1 : 0;
        ++stats.kills;
    }
    test_support::release_shared(report);
    return stats;
}

} // namespace

TEST_CASE("SIGKILL at random instants during 64 B commits never loses or tears a state", "[crash]") {
    const int kills = test_support::env_count("KEEPSAKE_KILLS", 200);
    const auto stats = kill_committer_repeatedly<64>(kills, 2000);
    std::printf("64 B commits: %d kills, %d landed mid-commit, reached generation %llu\n", stats.kills,
                stats.mid_commit, static_cast<unsigned long long>(stats.last_generation));
    CHECK(stats.kills >= kills * 9 / 10);
}

TEST_CASE("SIGKILL at random instants during 64 KiB commits never loses or tears a state", "[crash]") {
    const int kills = test_support::env_count("KEEPSAKE_KILLS", 200);
    const auto stats = kill_committer_repeatedly<65536>(kills, 2000);
    std::printf("64 KiB commits: %d kills, %d landed mid-commit, reached generation %llu\n", stats.kills,
                stats.mid_commit, static_cast<unsigned long long>(stats.last_generation));
    CHECK(stats.kills >= kills * 9 / 10);
    // With commits of several microseconds most kills land inside one; if
    // none did, this test would not be testing torn writes at all.
    CHECK(stats.mid_commit > 0);
}

TEST_CASE("SIGKILL during segment creation leaves a segment the next opener can use", "[crash]") {
    shm_dir dir;
    auto* report = test_support::shared_anonymous<child_report>();
    const int kills = test_support::env_count("KEEPSAKE_KILLS", 200) / 2;
    int created = 0, reopened = 0, had_state = 0, unfinished_seen = 0;
    for (int round = 0; round < kills; ++round) {
        report->ready.store(0);
        const pid_t child = test_support::fork_child([&] {
            report->ready.store(1, std::memory_order_release);
            for (;;) {
                segment::remove("born", dir.path());
                segment s("born", dir.options(4u << 20, 512));
                keeper<blob<64>> k(s, "state");
                blob<64> value{};
                blob<64>::make(value, 1);
                k.commit(value);
            }
        });
        REQUIRE(test_support::wait_ready(report->ready, child));
        sleep_random_us(3000);
        test_support::kill_and_reap(child);

        // Look at the file as the kill left it: absent, unfinished (magic
        // still 0: creation writes it last), or finished.
        std::uint64_t magic = 0;
        const int fd = ::open(dir.file("born").c_str(), O_RDONLY);
        const bool absent = fd < 0;
        const bool unfinished = !absent && ::pread(fd, &magic, sizeof(magic), 0) >= 0 && magic == 0;
        if (fd >= 0) ::close(fd);

        segment s("born", dir.options(4u << 20, 512));
        if (absent || unfinished) REQUIRE(s.outcome() == open_outcome::created);
        else REQUIRE(s.outcome() != open_outcome::created);  // a finished segment is never rebuilt
        unfinished_seen += unfinished ? 1 : 0;
        (s.outcome() == open_outcome::created ? created : reopened) += 1;
        REQUIRE(s.damaged_entries() == 0);
        keeper<blob<64>> k(s, "state");
        blob<64> value{};
        if (auto info = k.restore_into(value)) {
            REQUIRE(value.consistent());
            // 1 from the child, or 2 from the last round if the kill came
            // before the child removed that segment.
            REQUIRE((value.generation == 1 || value.generation == 2));
            ++had_state;
        }
        blob<64>::make(value, 2);
        REQUIRE(k.commit(value) >= 1);
    }
    std::printf("segment creation: %d kills, %d created afresh (%d of them rebuilt from an unfinished creation), "
                "%d reopened, %d with a state\n", kills, created, unfinished_seen, reopened, had_state);
    test_support::release_shared(report);
}

TEST_CASE("SIGKILL while entries are added leaves a usable directory with every finished entry", "[crash]") {
    shm_dir dir;
    auto* report = test_support::shared_anonymous<child_report>();
    const int kills = test_support::env_count("KEEPSAKE_KILLS", 200) / 2;
    const auto options = dir.options(8u << 20, 4096);
    std::uint64_t entries_checked = 0;
    for (int round = 0; round < kills; ++round) {
        report->ready.store(0);
        const pid_t child = test_support::fork_child([&] {
            segment s("growing", options);
            const auto existing = s.entries();
            // Resume at the first key whose commit did not finish.
            std::uint64_t next = existing.size();
            if (next != 0 && existing.back().generation == 0) --next;
            if (next > 3000) {  // start over before the directory fills
                s.close();
                segment::remove("growing", dir.path());
                s = segment("growing", options);
                next = 0;
            }
            report->last_committed.store(next, std::memory_order_release);
            report->ready.store(1, std::memory_order_release);
            // Adding keys is fast: stop short of a full directory (the
            // parent adds a probe) and wait for the kill.
            for (; next < 4000; ++next) {
                keeper<blob<64>> k(s, "k" + std::to_string(next));
                blob<64> value{};
                blob<64>::make(value, next);
                k.commit(value);
                report->last_committed.store(next + 1, std::memory_order_release);
            }
            for (;;) ::pause();
        });
        REQUIRE(test_support::wait_ready(report->ready, child));
        sleep_random_us(1500);
        test_support::kill_and_reap(child);
        const std::uint64_t finished = report->last_committed.load(std::memory_order_acquire);

        segment s("growing", options);
        REQUIRE(s.damaged_entries() == 0);
        const auto listed = s.entries();
        // Every entry whose commit finished is there; at most one more (added,
        // maybe not committed) follows.
        REQUIRE(listed.size() >= finished);
        REQUIRE(listed.size() <= finished + 1);
        for (std::size_t i = 0; i < listed.size(); ++i) {
            REQUIRE(listed[i].key == "k" + std::to_string(i));
            REQUIRE(listed[i].invalid_slots == 0);
            if (i < finished) REQUIRE(listed[i].generation == 1);
        }
        entries_checked += listed.size();
        // The directory still takes new entries (then forget the probe).
        {
            keeper<int> probe(s, "probe");
            REQUIRE(probe.commit(1) == 1);
        }
        REQUIRE(s.remove_key("probe"));
    }
    std::printf("entry addition: %d kills, %llu entries checked\n", kills,
                static_cast<unsigned long long>(entries_checked));
    test_support::release_shared(report);
}

namespace {

// A state whose encoding grows with its generation, so its key keeps moving
// to larger slots: every word holds the generation.
struct growing_state {
    std::uint64_t generation = 0;
    std::vector<std::uint64_t> words;
    template <class Archive>
    void serialize(Archive& archive) { archive(generation, words); }

    static growing_state at(std::uint64_t generation) {
        return growing_state{generation, std::vector<std::uint64_t>(generation * 3 % 2400, generation)};
    }
    bool consistent() const {
        if (words.size() != generation * 3 % 2400) return false;
        for (std::uint64_t word : words)
            if (word != generation) return false;
        return true;
    }
};

struct growth_report {
    std::atomic<int> ready{0};
    std::atomic<std::uint64_t> round{0};
    std::atomic<std::uint64_t> last_committed{0};  // of key "g<round>"
};

} // namespace

TEST_CASE("SIGKILL at random instants while keys grow, move and are removed: whole states, no space lost",
          "[crash][grow]") {
    shm_dir dir;
    auto* report = test_support::shared_anonymous<growth_report>();
    const int kills = test_support::env_count("KEEPSAKE_KILLS", 200);
    const auto options = dir.options(1u << 20, 64);
    int moved = 0;
    for (int round = 0; round < kills; ++round) {
        report->ready.store(0);
        report->last_committed.store(0);
        const pid_t child = test_support::fork_child([&] {
            segment s("moves", options);
            keeper<growing_state> steady(s, "steady");
            report->ready.store(1, std::memory_order_release);
            for (std::uint64_t key_round = 0;; ++key_round) {
                report->last_committed.store(0, std::memory_order_release);
                report->round.store(key_round, std::memory_order_release);
                const std::string key = "g" + std::to_string(key_round);
                {
                    keeper<growing_state> k(s, key);
                    for (std::uint64_t generation = 1; generation < 800; ++generation) {
                        k.commit(growing_state::at(generation));
                        report->last_committed.store(generation, std::memory_order_release);
                        if (generation % 16 == 0) steady.commit(growing_state::at(steady.generation() + 1));
                    }
                }
                s.remove_key(key);
            }
        });
        REQUIRE(test_support::wait_ready(report->ready, child));
        sleep_random_us(20000);
        test_support::kill_and_reap(child);
        const std::string current = "g" + std::to_string(report->round.load(std::memory_order_acquire));
        const std::uint64_t reported = report->last_committed.load(std::memory_order_acquire);

        segment s("moves", options);
        REQUIRE(s.damaged_entries() == 0);
        for (const keepsake::entry_info& entry : s.entries()) {
            keeper<growing_state> k(s, entry.key);
            const auto kept = k.restore();
            if (entry.key == current && reported != 0) REQUIRE(kept);
            if (!kept) continue;  // created, killed before its first commit
            REQUIRE(kept->value.consistent());
            REQUIRE(kept->value.generation == kept->info.generation);
            if (entry.key == current) REQUIRE(kept->info.generation >= reported);
            moved += entry.moves != 0 ? 1 : 0;
        }
        // Whatever the kill interrupted, all space comes back: with every key
        // removed, the data area is free again.
        for (const keepsake::entry_info& entry : s.entries()) REQUIRE(s.remove_key(entry.key));
        REQUIRE(s.free_bytes() == s.size() - keepsake::detail::align64(512 + 64 * sizeof(keepsake::detail::dir_entry)));
    }
    std::printf("growing commits: %d kills, %d keys found moved\n", kills, moved);
    CHECK(moved > 0);
    test_support::release_shared(report);
}

namespace {

// Keys for the segment-growth kill test: key i's state at generation g has
// a length that grows with g, and every word follows from i and g.
struct keyed_state {
    std::uint64_t key = 0;
    std::uint64_t generation = 0;
    std::vector<std::uint64_t> words;
    template <class Archive>
    void serialize(Archive& archive) { archive(key, generation, words); }

    static std::size_t length(std::uint64_t key, std::uint64_t generation) {
        return static_cast<std::size_t>(std::min<std::uint64_t>(4 + key % 32 + generation * 24, 400));
    }
    static std::uint64_t word(std::uint64_t key, std::uint64_t generation, std::size_t at) {
        return generation * 0x9E3779B97F4A7C15ull + key * 0x100000001B3ull + at;
    }
    static keyed_state at(std::uint64_t key, std::uint64_t generation) {
        keyed_state state{key, generation, std::vector<std::uint64_t>(length(key, generation))};
        for (std::size_t i = 0; i < state.words.size(); ++i) state.words[i] = word(key, generation, i);
        return state;
    }
    bool whole(std::uint64_t expected_key) const {
        if (key != expected_key || words.size() != length(key, generation)) return false;
        for (std::size_t i = 0; i < words.size(); ++i)
            if (words[i] != word(key, generation, i)) return false;
        return true;
    }
};

constexpr std::size_t growth_max_keys = 8192;

struct segment_growth_report {
    std::atomic<int> ready{0};
    std::atomic<std::uint64_t> committed[growth_max_keys];  // per key: the generation whose commit returned
};

// The header as the file holds it (zeros where the file is absent or short).
keepsake::detail::segment_header header_on_disk(const std::string& path, std::uint64_t& file_size) {
    keepsake::detail::segment_header header{};
    file_size = 0;
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) return header;
    struct stat info {};
    if (::fstat(fd, &info) == 0) file_size = static_cast<std::uint64_t>(info.st_size);
    if (::pread(fd, &header, sizeof(header), 0) != static_cast<ssize_t>(sizeof(header))) header = {};
    ::close(fd);
    return header;
}

// Bytes the directory blocks after the first take from the data area.
std::uint64_t added_block_bytes(const keepsake::detail::segment_header& header) {
    std::uint64_t bytes = 0;
    for (std::uint32_t b = 1; b < header.block_count && b < keepsake::detail::max_directory_blocks; ++b)
        bytes += keepsake::detail::align64(std::uint64_t{header.blocks[b].count} * sizeof(keepsake::detail::dir_entry));
    return bytes;
}

// Growths of the file from `from` to `to` bytes, as segment_impl::grow
// sizes them (twice the size, or the next MiB past what was needed; the
// needs here are below 1 MiB).
int growths_between(std::uint64_t from, std::uint64_t to) {
    int count = 0;
    for (std::uint64_t size = from; size < to; ++count)
        size = std::max(size * 2, (size + 1 + (1u << 20) - 1) & ~std::uint64_t{(1u << 20) - 1});
    return count;
}

// Adds keys k<n>, k<n+1>, ... (each with a first commit), and after each
// one commits an older key at its next generation, which grows it (and
// moves it to larger slots now and then): the directory keeps needing new
// blocks and the file keeps growing.
[[noreturn]] void add_and_grow_forever(const keepsake::segment_options& options, segment_growth_report& report,
                                       std::uint64_t seed) {
    segment s("grown", options);
    const auto listed = s.entries();
    std::uint64_t next = listed.size();
    std::mt19937_64 pick(seed);
    report.ready.store(1, std::memory_order_release);
    for (;; ++next) {
        if (next < growth_max_keys) {
            keeper<keyed_state> k(s, "k" + std::to_string(next));
            report.committed[next].store(k.commit(keyed_state::at(next, k.generation() + 1)),
                                         std::memory_order_release);
        }
        const std::uint64_t older = pick() % std::min<std::uint64_t>(next + 1, growth_max_keys);
        keeper<keyed_state> k(s, "k" + std::to_string(older));
        report.committed[older].store(k.commit(keyed_state::at(older, k.generation() + 1)), std::memory_order_release);
    }
}

} // namespace

// From the smallest segment the options allow (one directory entry, 4 KiB
// of data), a child adds keys and grows their states, so the file grows
// (and is mapped further) and the directory takes new blocks, while it is
// SIGKILLed at random instants. Every 10 kills the segment starts afresh,
// so growth keeps happening rather than once.
TEST_CASE("SIGKILL at random instants while a segment grows its file and its directory from the smallest size",
          "[crash][grow]") {
    using keepsake::detail::align64;
    using keepsake::detail::dir_entry;
    using keepsake::detail::segment_header;
    shm_dir dir;
    auto* report = test_support::shared_anonymous<segment_growth_report>();
    const int kills = test_support::env_count("KEEPSAKE_KILLS", 200);
    constexpr int fresh_every = 10;
    const std::uint64_t data_offset = align64(sizeof(segment_header) + sizeof(dir_entry));
    auto options = dir.options(data_offset + 4096, 1);
    options.max_size = 256u << 20;
    {
        // It is the smallest: a byte less is refused.
        auto smaller = options;
        smaller.size -= 1;
        REQUIRE(test_support::error_from([&] { segment("grown", smaller); }).code() == keepsake::errc::invalid_argument);
    }
    const std::string path = dir.file("grown");
    std::vector<std::uint64_t> last_generation(growth_max_keys, 0);
    int grew = 0, mid_growth = 0, blocks_added = 0, emptied = 0;
    std::uint64_t largest = 0, most_blocks = 0, keys_checked = 0, most_keys = 0;
    std::uint64_t size_before = 0;
    std::uint32_t blocks_before = 0;
    for (int round = 0; round < kills; ++round) {
        if (round % fresh_every == 0) {
            segment::remove("grown", dir.path());
            for (auto& committed : report->committed) committed.store(0);
            std::fill(last_generation.begin(), last_generation.end(), 0);
            size_before = options.size;  // as the next child (or this parent) creates it
            blocks_before = 1;
        }
        report->ready.store(0);
        const pid_t child = test_support::fork_child(
            [&] { add_and_grow_forever(options, *report, static_cast<std::uint64_t>(round) * 6364136223846793005ull + 1); });
        REQUIRE(test_support::wait_ready(report->ready, child));
        sleep_random_us(4000);
        test_support::kill_and_reap(child);

        // The file as the kill left it: longer than its recorded size when
        // the kill came in the middle of a growth.
        std::uint64_t file_size = 0;
        const segment_header left = header_on_disk(path, file_size);
        const bool finished = left.magic == keepsake::detail::segment_magic;
        if (finished && file_size > left.total_size) ++mid_growth;

        // It opens, at once (a hang ends the test run with SIGALRM), and whole.
        ::alarm(60);
        segment s("grown", options);
        REQUIRE(s.damaged_entries() == 0);
        REQUIRE(s.size() == std::max(file_size, options.size));  // the file's length is the size: no tail lost
        REQUIRE(s.size() >= size_before);
        std::uint64_t opened_size = 0;
        const segment_header header = header_on_disk(path, opened_size);
        REQUIRE(header.block_count >= blocks_before);
        grew += growths_between(size_before, s.size());
        blocks_added += static_cast<int>(header.block_count - blocks_before);
        size_before = s.size();
        blocks_before = header.block_count;
        largest = std::max(largest, s.size());
        most_blocks = std::max<std::uint64_t>(most_blocks, header.block_count);

        // Keys were added in order: every key whose first commit returned is
        // listed, at its place, with a whole state that never goes back.
        const auto listed = s.entries();
        REQUIRE(listed.size() <= growth_max_keys);
        std::uint64_t in_regions = 0;
        for (std::size_t i = 0; i < listed.size(); ++i) {
            REQUIRE(listed[i].key == "k" + std::to_string(i));
            REQUIRE(listed[i].invalid_slots == 0);
            in_regions += listed[i].slot_count * keepsake::detail::slot_stride(listed[i].slot_capacity);
        }
        for (std::size_t i = listed.size(); i < growth_max_keys; ++i)
            REQUIRE(report->committed[i].load(std::memory_order_acquire) == 0);
        for (std::size_t i = 0; i < listed.size(); ++i) {
            const std::uint64_t returned = report->committed[i].load(std::memory_order_acquire);
            keeper<keyed_state> k(s, listed[i].key);
            const auto kept = k.restore();
            if (!kept) {  // added, killed before its first commit
                REQUIRE(returned == 0);
                continue;
            }
            INFO("key " << listed[i].key);
            REQUIRE(kept->value.whole(i));
            REQUIRE(kept->value.generation == kept->info.generation);
            REQUIRE(kept->info.skipped_slots == 0);
            REQUIRE(kept->info.generation >= returned);
            REQUIRE(kept->info.generation <= returned + 1);
            REQUIRE(kept->info.generation >= last_generation[i]);
            last_generation[i] = kept->info.generation;
        }
        keys_checked += listed.size();
        most_keys = std::max<std::uint64_t>(most_keys, listed.size());
        // No space lost: what the keys and the added directory blocks do
        // not hold is free.
        REQUIRE(s.free_bytes() == s.size() - data_offset - added_block_bytes(header) - in_regions);
        if (round % fresh_every == fresh_every - 1) {
            // As the other growth test: with every key removed, the data
            // area is free again, but for the directory's added blocks.
            for (const keepsake::entry_info& entry : listed) REQUIRE(s.remove_key(entry.key));
            REQUIRE(s.free_bytes() == s.size() - data_offset - added_block_bytes(header));
            ++emptied;
        }
        ::alarm(0);
    }
    std::printf("segment growth: %d kills, %d file growths (%d caught half done), %d blocks added, up to %llu KiB "
                "and %llu blocks, %llu keys checked (up to %llu), emptied %d times\n",
                kills, grew, mid_growth, blocks_added, static_cast<unsigned long long>(largest >> 10),
                static_cast<unsigned long long>(most_blocks), static_cast<unsigned long long>(keys_checked),
                static_cast<unsigned long long>(most_keys), emptied);
    CHECK(grew > 0);
    CHECK(blocks_added > 0);
    test_support::release_shared(report);
}

}  // namespace crash_tests
