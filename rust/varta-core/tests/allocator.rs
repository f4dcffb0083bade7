//! `sys::set_mmap_threshold` (docs/operations.md#resources). A test binary of
//! its own: the setting is process-wide and the check counts the process's
//! mapped chunks, which other tests running alongside would change.

#![cfg(all(target_os = "linux", target_env = "gnu"))]

use varta_core::sys::set_mmap_threshold;

fn mapped_chunks() -> usize {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    unsafe { libc::mallinfo2() }.hblks
}

#[test]
fn buffers_over_the_threshold_get_mappings_of_their_own() {
    assert!(set_mmap_threshold(64 * 1024));
    let before = mapped_chunks();
    // 96 KiB is under glibc's default threshold (128 KiB). A request the
    // heap's free chunks can serve still comes from them, so take many: the
    // free space a test process happens to have holds only a few.
    let bufs: Vec<Vec<u8>> = (0..64).map(|_| vec![1u8; 96 * 1024]).collect();
    let mapped = mapped_chunks() - before;
    assert!(
        mapped >= 56,
        "only {mapped} of 64 buffers over the threshold were mapped"
    );
    drop(std::hint::black_box(bufs));
    assert_eq!(mapped_chunks(), before, "unmapped when freed");

    assert!(!set_mmap_threshold(usize::MAX), "not a C int: refused");
}
