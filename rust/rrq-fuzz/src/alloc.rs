//! The counting global allocator behind the "no unbounded allocation" rule.
//!
//! A thread running a fuzz input is *armed*: every byte it allocates or frees
//! is counted, and its peak of live bytes above the level at arming is kept.
//! When that peak would pass the budget, the allocation is not made: the
//! thread records the overrun and blocks forever, and the watchdog (another
//! thread) reports "unbounded allocation" with the input saved. Blocking is
//! the only way out: an allocator may not unwind, and returning null aborts
//! the process before anything could be saved.
//!
//! Threads that are not armed (the watchdog, the test runner) are not counted.

// A global allocator is an `unsafe impl` forwarding to the system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// Default budget: live bytes one input may hold above its starting level.
pub const DEFAULT_LIMIT: usize = 64 << 20;

static OVER: AtomicBool = AtomicBool::new(false);
static OVER_BYTES: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LIMIT: Cell<usize> = const { Cell::new(DEFAULT_LIMIT) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

/// The allocator: [`System`] plus per-thread accounting.
#[derive(Debug)]
pub struct Counting;

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Counts `delta` bytes on an armed thread; blocks the thread for good when
/// the budget would be exceeded. Touches only const, drop-free thread locals,
/// so it never allocates itself.
fn account(delta: isize) {
    let _ = ARMED.try_with(|armed| {
        if !armed.get() {
            return;
        }
        let live = LIVE.get().saturating_add(delta);
        LIVE.set(live);
        if live > PEAK.get() {
            PEAK.set(live);
            // live > PEAK >= 0 here.
            if live.unsigned_abs() > LIMIT.get() {
                armed.set(false);
                OVER_BYTES.store(live.unsigned_abs(), Ordering::SeqCst);
                OVER.store(true, Ordering::SeqCst);
                loop {
                    // The watchdog sees OVER, saves the input and exits.
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
        }
    });
}

fn signed(n: usize) -> isize {
    isize::try_from(n).unwrap_or(isize::MAX)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        account(signed(layout.size()));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        account(signed(layout.size()));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        account(-signed(layout.size()));
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        account(signed(new_size).saturating_sub(signed(layout.size())));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Starts counting on this thread with a budget of `limit` bytes.
pub fn arm(limit: usize) {
    LIVE.set(0);
    PEAK.set(0);
    LIMIT.set(limit);
    ARMED.set(true);
}

/// Stops counting on this thread; returns the peak of live bytes since [`arm`].
pub fn disarm() -> usize {
    ARMED.set(false);
    PEAK.get().max(0).unsigned_abs()
}

/// Bytes live when an armed thread overran its budget, if one did.
pub fn overrun() -> Option<usize> {
    OVER.load(Ordering::SeqCst)
        .then(|| OVER_BYTES.load(Ordering::SeqCst))
}

/// Forgets an overrun (the blocked thread stays blocked).
pub fn clear_overrun() {
    OVER.store(false, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_peak_of_an_armed_thread() {
        arm(DEFAULT_LIMIT);
        let v: Vec<u8> = Vec::with_capacity(1 << 20);
        drop(v);
        let small = vec![0u8; 10];
        let peak = disarm();
        drop(small);
        assert!((1 << 20..(1 << 20) + 4096).contains(&peak), "{peak}");
    }
}
