//! Open-loop load: requests arrive at a fixed rate whatever the server does, as callers of a
//! municipality's many case systems do, instead of a fixed number of callers each waiting for
//! its answer (which slows down with the server and so never overloads it).
//!
//! Each request's latency runs from the moment it was due, not from when it was sent, so a
//! driver that falls behind shows up in the figures instead of hiding (coordinated omission).
//! Results are kept per window in fixed-size histograms: a half-hour soak at thousands of
//! requests a second must not grow the measuring process's memory.

use hdrhistogram::Histogram;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// What became of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered, in time and as expected.
    Ok,
    /// Refused at once because the server was full (`RESOURCE_EXHAUSTED`).
    Shed,
    /// Past its deadline: refused as `DEADLINE_EXCEEDED`, or answered too late to be of use.
    Late,
    /// Anything else: an error, or an answer that was not what the caller expected.
    Failed,
}

/// A run's shape.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    /// Arrivals per second.
    pub rate: f64,
    pub duration: Duration,
    /// Results are grouped by the window in which each request was due.
    pub window: Duration,
    /// The caller's deadline: an answer after it counts as late.
    pub deadline: Duration,
    /// Requests in flight beyond which the driver itself drops arrivals (counted, not sent):
    /// the bound on the measuring process's own memory when the server stops answering.
    pub max_in_flight: usize,
}

/// The results of one window.
#[derive(Clone)]
pub struct Window {
    /// Latencies of the answered requests, in microseconds.
    pub ok: Histogram<u64>,
    /// Latencies of the shed requests, in microseconds.
    pub shed: Histogram<u64>,
    pub late: u64,
    pub failed: u64,
    /// Arrivals the driver did not send because `max_in_flight` requests were outstanding.
    pub dropped: u64,
}

impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Window")
            .field("ok", &self.ok.len())
            .field("ok_p99", &self.ok_at(0.99))
            .field("shed", &self.shed.len())
            .field("late", &self.late)
            .field("failed", &self.failed)
            .field("dropped", &self.dropped)
            .finish()
    }
}

impl Window {
    fn new() -> Self {
        Self {
            ok: latency_histogram(),
            shed: latency_histogram(),
            late: 0,
            failed: 0,
            dropped: 0,
        }
    }

    fn record(&mut self, outcome: Outcome, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        match outcome {
            Outcome::Ok => self.ok.saturating_record(micros),
            Outcome::Shed => self.shed.saturating_record(micros),
            Outcome::Late => self.late += 1,
            Outcome::Failed => self.failed += 1,
        }
    }

    /// Adds another window's results to this one.
    pub fn merge(&mut self, other: &Window) {
        // Both are made by `latency_histogram`, with the same bounds: adding cannot fail.
        let _ = self.ok.add(&other.ok);
        let _ = self.shed.add(&other.shed);
        self.late += other.late;
        self.failed += other.failed;
        self.dropped += other.dropped;
    }

    pub fn arrivals(&self) -> u64 {
        self.ok.len() + self.shed.len() + self.late + self.failed + self.dropped
    }

    /// The answered requests' latency at quantile `q` (0.0–1.0).
    pub fn ok_at(&self, q: f64) -> Duration {
        Duration::from_micros(self.ok.value_at_quantile(q))
    }

    /// The shed requests' latency at quantile `q` (0.0–1.0).
    pub fn shed_at(&self, q: f64) -> Duration {
        Duration::from_micros(self.shed.value_at_quantile(q))
    }
}

/// One microsecond to one minute at three significant digits: a few tens of kilobytes each.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| unreachable!())
}

/// A whole run: its windows in order, and how long the arrivals took.
#[derive(Debug)]
pub struct Report {
    pub windows: Vec<Window>,
    /// From the first arrival to the last answer.
    pub elapsed: Duration,
    pub schedule: Schedule,
}

impl Report {
    /// Every window together.
    pub fn total(&self) -> Window {
        self.span(0..self.windows.len())
    }

    /// The windows in `range` together.
    pub fn span(&self, range: std::ops::Range<usize>) -> Window {
        let mut total = Window::new();
        for window in &self.windows[range] {
            total.merge(window);
        }
        total
    }

    /// Answered requests per second of the schedule: the rate at which useful answers came.
    pub fn goodput(&self) -> f64 {
        self.total().ok.len() as f64 / self.schedule.duration.as_secs_f64()
    }
}

/// Sends `schedule.rate` requests a second for `schedule.duration`, each by `call(n)` for its
/// arrival number `n`, then waits for the outstanding ones. `on_window` is called as each
/// window's arrivals end (with the window's index), for samples of the process taken alongside.
pub async fn run<F, Fut>(schedule: Schedule, call: F, mut on_window: impl FnMut(usize)) -> Report
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    assert!(schedule.rate > 0.0, "an open-loop rate must be positive");
    let window_count =
        ((schedule.duration.as_secs_f64() / schedule.window.as_secs_f64()).ceil() as usize).max(1);
    let windows: Arc<Vec<Mutex<Window>>> = Arc::new(
        (0..window_count)
            .map(|_| Mutex::new(Window::new()))
            .collect(),
    );
    let in_flight = Arc::new(AtomicUsize::new(0));
    let all_answered = Arc::new(tokio::sync::Notify::new());
    let total = (schedule.rate * schedule.duration.as_secs_f64()).round() as u64;
    let mut sent = 0u64;
    let mut window_done = 0usize;
    let started = Instant::now();
    // The timer's resolution is a millisecond: each tick sends every arrival due by then, at
    // the instant it was due.
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while sent < total {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * schedule.rate) as u64).min(total);
        while sent < due {
            let offset = Duration::from_secs_f64(sent as f64 / schedule.rate);
            // By count, in integers: each window gets its share of the arrivals exactly.
            let index =
                usize::try_from(u128::from(sent) * window_count as u128 / u128::from(total))
                    .unwrap_or(window_count - 1);
            if in_flight.load(Ordering::Acquire) >= schedule.max_in_flight {
                lock(&windows[index]).dropped += 1;
            } else {
                in_flight.fetch_add(1, Ordering::AcqRel);
                let request = call(sent);
                let (windows, in_flight, all_answered) = (
                    Arc::clone(&windows),
                    Arc::clone(&in_flight),
                    Arc::clone(&all_answered),
                );
                let due_at = started + offset;
                let deadline = schedule.deadline;
                tokio::spawn(async move {
                    let mut outcome = request.await;
                    let latency = due_at.elapsed();
                    if outcome == Outcome::Ok && latency > deadline {
                        outcome = Outcome::Late;
                    }
                    lock(&windows[index]).record(outcome, latency);
                    if in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
                        all_answered.notify_one();
                    }
                });
            }
            sent += 1;
        }
        let finished = window_of(started.elapsed(), schedule.window, window_count);
        while window_done < finished {
            on_window(window_done);
            window_done += 1;
        }
    }
    // `notify_one` keeps a permit when nobody waits yet, so an answer that lands between the
    // check and the wait is not missed.
    while in_flight.load(Ordering::Acquire) > 0 {
        all_answered.notified().await;
    }
    while window_done < window_count {
        on_window(window_done);
        window_done += 1;
    }
    let elapsed = started.elapsed();
    let windows = windows.iter().map(|w| lock(w).clone()).collect();
    Report {
        windows,
        elapsed,
        schedule,
    }
}

fn window_of(offset: Duration, window: Duration, count: usize) -> usize {
    ((offset.as_secs_f64() / window.as_secs_f64()) as usize).min(count.saturating_sub(1))
}

fn lock(window: &Mutex<Window>) -> std::sync::MutexGuard<'_, Window> {
    // A poisoned window only means a recording task panicked mid-update of plain counters.
    window
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The process's resident set and its peak, in bytes (`/proc/self/status`); zero where that
/// cannot be read.
pub fn resident_set() -> (u64, u64) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return (0, 0);
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The process's open file descriptors (sockets included); zero where that cannot be read.
pub fn open_files() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |entries| entries.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(rate: f64, millis: u64) -> Schedule {
        Schedule {
            rate,
            duration: Duration::from_millis(millis),
            window: Duration::from_millis(100),
            deadline: Duration::from_secs(1),
            max_in_flight: 10_000,
        }
    }

    // Paused time: the clock moves only when every task waits, so the figures are exact.
    #[tokio::test(start_paused = true)]
    async fn sends_the_rate_times_the_duration_spread_over_the_windows() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let mut windows_seen = Vec::new();
        let report = run(
            schedule(2_000.0, 500),
            move |_| {
                counted.fetch_add(1, Ordering::Relaxed);
                async { Outcome::Ok }
            },
            |w| windows_seen.push(w),
        )
        .await;
        assert_eq!(calls.load(Ordering::Relaxed), 1_000);
        assert_eq!(report.total().ok.len(), 1_000);
        assert_eq!(report.windows.len(), 5);
        assert_eq!(windows_seen, vec![0, 1, 2, 3, 4]);
        // Arrivals are spread evenly, not sent in one burst.
        for window in &report.windows {
            assert_eq!(window.arrivals(), 200, "{:?}", report.windows);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_server_does_not_slow_the_arrivals() {
        // Each answer takes 50 ms; a closed loop of 10 callers would manage 200 a second. The
        // open loop still sends 1,000 in half a second, and every latency includes the wait.
        let report = run(
            schedule(2_000.0, 500),
            |_| async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Outcome::Ok
            },
            |_| {},
        )
        .await;
        let total = report.total();
        assert_eq!(total.ok.len(), 1_000);
        assert!(total.ok_at(0.0) >= Duration::from_millis(50));
        assert!(report.elapsed < Duration::from_millis(900), "{report:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn outcomes_are_counted_apart_and_a_late_answer_is_not_good() {
        let mut shape = schedule(1_000.0, 200);
        shape.deadline = Duration::from_millis(20);
        let report = run(
            shape,
            |n| async move {
                match n % 4 {
                    0 => Outcome::Ok,
                    1 => Outcome::Shed,
                    2 => Outcome::Failed,
                    _ => {
                        // Answered, but after the caller's deadline.
                        tokio::time::sleep(Duration::from_millis(40)).await;
                        Outcome::Ok
                    }
                }
            },
            |_| {},
        )
        .await;
        let total = report.total();
        assert_eq!(
            (total.ok.len(), total.shed.len(), total.failed, total.late),
            (50, 50, 50, 50)
        );
        assert!(
            (report.goodput() - 250.0).abs() < 1.0,
            "{}",
            report.goodput()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_stops_answering_costs_dropped_arrivals_not_memory() {
        let mut shape = schedule(1_000.0, 300);
        shape.max_in_flight = 10;
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let held = Arc::clone(&gate);
        let run = tokio::spawn(run(
            shape,
            move |_| {
                let held = Arc::clone(&held);
                async move {
                    let _ = held.acquire().await;
                    Outcome::Ok
                }
            },
            |_| {},
        ));
        // Past the last arrival (on the paused clock), release the ten held requests.
        tokio::time::sleep(Duration::from_millis(400)).await;
        gate.close();
        let report = run.await.unwrap();
        let total = report.total();
        assert_eq!(total.arrivals(), 300);
        assert_eq!(total.ok.len(), 10);
        assert_eq!(total.dropped, 290);
    }
}
