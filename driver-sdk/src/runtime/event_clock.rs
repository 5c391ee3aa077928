//! The clock of task events: a raw reading on the task path, turned into Unix time only
//! when reported.
//!
//! Invariants:
//! - Making the clock costs two clock reads: every worker makes one at start, and a
//!   calibration loop there (a clock crate's spins for at least half a millisecond) would
//!   be paid by every worker start and every one of thousands of actors.
//! - The counter's rate is measured at each report, between the reading taken when the
//!   clock was made and one taken at the report, so its error is that of two pairs of
//!   back-to-back reads over the whole interval, applied only to the time since the event.
//! - A raw reading is never 0 (0 means "no time" to the event buffers).

use std::time::Instant;

use miniray_common::time::now_us;

pub(crate) struct EventClock {
    origin: Instant,
    source: Source,
}

#[derive(Clone, Copy)]
enum Source {
    /// The CPU's time-stamp counter where it is invariant (constant rate in every power
    /// state, as the kernel's own `tsc` clocksource needs), read when the clock was made.
    #[cfg(target_arch = "x86_64")]
    Tsc { origin_ticks: u64 },
    /// Nanoseconds since `origin` from the OS's monotonic clock, plus one.
    Monotonic,
}

impl EventClock {
    pub(crate) fn new() -> Self {
        #[cfg(target_arch = "x86_64")]
        if invariant_tsc() {
            let origin_ticks = tsc();
            return Self {
                origin: Instant::now(),
                source: Source::Tsc { origin_ticks },
            };
        }
        Self {
            origin: Instant::now(),
            source: Source::Monotonic,
        }
    }

    #[inline]
    pub(crate) fn raw(&self) -> u64 {
        match self.source {
            #[cfg(target_arch = "x86_64")]
            Source::Tsc { .. } => tsc().max(1),
            Source::Monotonic => self.monotonic_ns() + 1,
        }
    }

    /// Turns raw readings into Unix microseconds, as of now.
    pub(crate) fn to_unix(&self) -> impl Fn(u64) -> u64 + use<> {
        let raw_now = self.raw();
        let unix_now = now_us();
        let ns_per_unit = match self.source {
            #[cfg(target_arch = "x86_64")]
            Source::Tsc { origin_ticks } => {
                let ticks = raw_now.saturating_sub(origin_ticks);
                if ticks == 0 {
                    0.0
                } else {
                    self.monotonic_ns() as f64 / ticks as f64
                }
            }
            Source::Monotonic => 1.0,
        };
        // One multiplication per reading: a report converts four per entry.
        let us_per_unit = ns_per_unit / 1_000.0;
        move |raw| {
            let ago_us = raw_now.saturating_sub(raw) as f64 * us_per_unit;
            unix_now.saturating_sub(ago_us as u64)
        }
    }

    fn monotonic_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX - 1)
    }
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn tsc() -> u64 {
    // SAFETY: RDTSC reads a counter; it has no memory effects, and every x86_64 CPU has it.
    unsafe { std::arch::x86_64::_rdtsc() }
}

/// Whether the time-stamp counter runs at a constant rate in every power state (CPUID
/// leaf 0x8000_0007, EDX bit 8), so that ticks measure time.
#[cfg(target_arch = "x86_64")]
fn invariant_tsc() -> bool {
    use std::arch::x86_64::__cpuid;
    const POWER_MANAGEMENT_LEAF: u32 = 0x8000_0007;
    const INVARIANT_TSC: u32 = 1 << 8;
    __cpuid(0x8000_0000).eax >= POWER_MANAGEMENT_LEAF
        && __cpuid(POWER_MANAGEMENT_LEAF).edx & INVARIANT_TSC != 0
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn check_agrees_with_the_wall_clock(clock: &EventClock) {
        let before = now_us();
        let first = clock.raw();
        std::thread::sleep(Duration::from_millis(20));
        let second = clock.raw();
        let after = now_us();
        assert!(first > 0 && second > first);
        let unix = clock.to_unix();
        let (first, second) = (unix(first), unix(second));
        // Reads a few microseconds apart; the slack is for a preempted test thread.
        let slack = 2_000;
        assert!(before.saturating_sub(slack) <= first, "{before} {first}");
        assert!(second <= after + slack, "{second} {after}");
        let gap = second - first;
        assert!((19_000..=20_000 + 2 * slack).contains(&gap), "{gap} µs");
    }

    #[test]
    fn readings_turn_into_the_unix_times_they_were_taken_at() {
        let clock = EventClock::new();
        check_agrees_with_the_wall_clock(&clock);
    }

    #[test]
    fn the_monotonic_fallback_agrees_too() {
        let clock = EventClock {
            origin: Instant::now(),
            source: Source::Monotonic,
        };
        check_agrees_with_the_wall_clock(&clock);
    }
}
