//! The `wxtoken` binary; everything happens in [`wxtoken::cli`].
//!
//! The one thing decided here is the allocator: jemalloc, as vector and
//! TiKV ship, because glibc's malloc keeps what a fill of many accounts
//! allocated on the HTTP client's threads (arena fragmentation) long after it
//! is freed. jemalloc's background thread gives unused pages back to the OS
//! within seconds ([`MALLOC_CONF`]); `docs/BENCHMARKS.md` §2 has the numbers.
//! Building with `RUSTFLAGS="--cfg wxtoken_system_allocator"` keeps the
//! system allocator, so that heap profilers (heaptrack) see every allocation.

#[cfg(all(unix, not(target_env = "msvc"), not(wxtoken_system_allocator)))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read once at start: purge with a background thread,
/// return dirty pages over 30 s (a 1 s decay made the read path's p99 1.7×
/// nginx's: pages given back were faulted in again under load; 30 s: 1.06×,
/// and memory is still back well within a minute of idling) and skip the
/// lazily-purged ("muzzy") state;
/// one arena and thread caches up to 4 KiB objects (the request path's
/// allocations are small; more arenas cost ~3 MiB at 10,000 accounts for no
/// measured gain on 2 cores). `_RJEM_MALLOC_CONF` overrides any of these.
#[cfg(all(unix, not(target_env = "msvc"), not(wxtoken_system_allocator)))]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8; 87] =
    b"background_thread:true,dirty_decay_ms:30000,muzzy_decay_ms:0,narenas:1,tcache_max:4096\0";

fn main() -> std::process::ExitCode {
    wxtoken::cli::main()
}
