//! Wall-clock phases of one operation (an endpoint start), reported on one
//! line to stderr so that an operator sees where a slow start spent its time.
//!
//! Owns nothing but the clock: [`Phases::done`] closes the phase running
//! since the previous call. Invariant: the phases are contiguous, so their
//! sum is the whole time from [`Phases::start`] to the last `done`.

use std::time::{Duration, Instant};

pub struct Phases {
    began: Instant,
    last: Instant,
    done: Vec<(&'static str, Duration)>,
}

impl Phases {
    pub fn start() -> Phases {
        let now = Instant::now();
        Phases { began: now, last: now, done: Vec::new() }
    }

    /// Close the phase `name` (the time since the previous phase ended).
    pub fn done(&mut self, name: &'static str) {
        let now = Instant::now();
        self.done.push((name, now - self.last));
        self.last = now;
    }

    /// `0.84 s (election 0.01, pageserver 0.30, …)`.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self.done.iter().map(|(n, d)| format!("{n} {:.3}", d.as_secs_f64())).collect();
        format!("{:.3} s ({})", (self.last - self.began).as_secs_f64(), parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_listed_in_order_and_sum_up() {
        let mut p = Phases::start();
        std::thread::sleep(Duration::from_millis(5));
        p.done("one");
        p.done("two");
        let s = p.summary();
        assert!(s.contains("(one 0.0") && s.contains(", two 0.0"), "{s}");
        let total: f64 = s.split(' ').next().unwrap().parse().unwrap();
        assert!(total >= 0.005, "{s}");
    }
}
