//! The process's choice of memory pages.

/// Turns transparent huge pages off for this process, unless
/// `MIMALLOC_ALLOW_THP` is set, in which case mimalloc's own reading of it
/// at start-up stands.
///
/// mimalloc asks the kernel for 2 MiB pages on its arenas. The consumer's
/// heap is spread thin over librdkafka's and the runtime's threads, so most
/// of each huge page it touches stays empty but is cleared all the same. In
/// the API case of `scripts/cost.sh` its resident memory grew from 35 to
/// 109-128 MiB with huge pages and to 38-43 MiB without, and it used less
/// CPU per event without them in nine of ten interleaved pairs and the same
/// in the tenth (medians 10.2 against 12.0 µs in four pairs of 100,000
/// messages, 10.45 against 11.3 in six runs of the script). Bulk runs over
/// 300,000 queued events showed no clear difference either way (8.5
/// against 9.4 µs in the script's six pairs, 8.65 against 8.1 in four
/// pairs on their own).
///
/// `MIMALLOC_ALLOW_THP` has to be in the process's environment: mimalloc
/// reads it before `main`, so a `.env` file comes too late for either.
///
/// Call it first thing in `main`. It acts on the whole process, threads
/// already running included. On other systems than Linux it does nothing.
pub fn prefer_small_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // Refused only by kernels older than 3.15, which then keep their
        // default: nothing to report.
        let _ = nix::sys::prctl::set_thp_disable(true);
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn huge_pages_are_off_unless_mimalloc_is_told_otherwise() {
        super::prefer_small_pages();
        let off = nix::sys::prctl::get_thp_disable().expect("PR_GET_THP_DISABLE");
        assert_eq!(off, std::env::var_os("MIMALLOC_ALLOW_THP").is_none());
    }
}
