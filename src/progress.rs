//! Progress of the long stages (the planner's setup, planning the batches, simulating them) on
//! stderr, so that a run of minutes never looks like a hang. On a terminal one line is redrawn
//! in place; when stderr is a file or a pipe (a batch job's log), whole lines are written at
//! the start, at every tenth of the work or every [`LINE_INTERVAL`], whichever comes first,
//! and at the end. Every line after the first carries the rate and an estimate of the time
//! left (the elapsed time per unit of work done, times the work left).

use crate::units::{clock, thousands};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};


/// Longest wait between two lines when stderr is not a terminal.
pub const LINE_INTERVAL: Duration = Duration::from_secs(10);
/// Shortest wait between two redraws of the terminal line.
const REDRAW_INTERVAL: Duration = Duration::from_millis(100);

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Off,
    /// One line redrawn in place (stderr is a terminal).
    Live,
    /// Whole lines, periodically (stderr is a file or a pipe).
    Lines,
}

impl Mode {
    /// `Off` unless `enabled`; otherwise as stderr is.
    pub fn for_stderr(enabled: bool) -> Mode {
        match (enabled, std::io::stderr().is_terminal()) {
            (false, _) => Mode::Off,
            (true, true) => Mode::Live,
            (true, false) => Mode::Lines,
        }
    }
}

/// One stage's progress: `total` units of work named `unit` (e.g. "batches"). Shared by the
/// worker threads (`inc` takes `&self`).
pub struct Progress {
    what: String,
    unit: &'static str,
    total: u64,
    mode: Mode,
    done: AtomicU64,
    start: Instant,
    shown: Mutex<Shown>,
    out: Mutex<Box<dyn Write + Send>>,
}

struct Shown {
    at: Instant,
    tenth: u64,
}

impl Progress {
    /// Progress written to stderr in `mode`.
    pub fn stderr(mode: Mode, what: &str, total: u64, unit: &'static str) -> Progress {
        Progress::to(Box::new(std::io::stderr()), mode, what, total, unit)
    }

    /// Progress written to `out` (tests read it back).
    pub fn to(out: Box<dyn Write + Send>, mode: Mode, what: &str, total: u64, unit: &'static str) -> Progress {
        let p = Progress {
            what: what.to_string(),
            unit,
            total,
            mode,
            done: AtomicU64::new(0),
            start: Instant::now(),
            shown: Mutex::new(Shown { at: Instant::now(), tenth: 0 }),
            out: Mutex::new(out),
        };
        if mode == Mode::Lines {
            p.write(&format!("{}: {} {}\n", p.what, thousands(total), p.unit));
        }
        p
    }

    /// `n` more units done.
    pub fn inc(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if self.mode == Mode::Off {
            return;
        }
        let Ok(mut shown) = self.shown.lock() else { return };
        let now = Instant::now();
        let tenth = (done * 10).checked_div(self.total).unwrap_or(10);
        let due = match self.mode {
            Mode::Live => now.duration_since(shown.at) >= REDRAW_INTERVAL,
            _ => tenth > shown.tenth || now.duration_since(shown.at) >= LINE_INTERVAL,
        };
        if !due || done >= self.total {
            return;
        }
        shown.at = now;
        shown.tenth = tenth;
        let line = self.line(done, now);
        drop(shown);
        match self.mode {
            Mode::Live => self.write(&format!("\r{line}\x1b[K")),
            _ => self.write(&format!("{line}\n")),
        }
    }

    /// The stage is over: the last line says how long it took (on a terminal it replaces the
    /// live line).
    pub fn finish(&self) {
        let line = format!(
            "{}: {} {} in {}",
            self.what,
            thousands(self.done.load(Ordering::Relaxed)),
            self.unit,
            clock(self.start.elapsed())
        );
        match self.mode {
            Mode::Off => {}
            Mode::Live => self.write(&format!("\r{line}\x1b[K\n")),
            Mode::Lines => self.write(&format!("{line}\n")),
        }
    }

    /// "what: done/total unit (p%), elapsed, rate, eta".
    fn line(&self, done: u64, now: Instant) -> String {
        let elapsed = now.duration_since(self.start);
        let secs = elapsed.as_secs_f64();
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        let eta = if done > 0 {
            clock(elapsed.mul_f64(self.total.saturating_sub(done) as f64 / done as f64))
        } else {
            "?".to_string()
        };
        format!(
            "{}: {}/{} {} ({:.0}%), {} elapsed, {:.1}/s, eta {}",
            self.what,
            thousands(done),
            thousands(self.total),
            self.unit,
            100.0 * done as f64 / self.total.max(1) as f64,
            clock(elapsed),
            rate,
            eta
        )
    }

    fn write(&self, text: &str) {
        // Progress is a courtesy: a closed stderr must not stop the run.
        if let Ok(mut out) = self.out.lock() {
            let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A writer the test keeps a handle on.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn text(s: &Shared) -> String {
        String::from_utf8(s.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn lines_come_at_every_tenth_with_an_estimate_and_end_with_the_total() {
        let out = Shared::default();
        let p = Progress::to(Box::new(out.clone()), Mode::Lines, "planning", 20, "batches");
        for _ in 0..20 {
            p.inc(1);
        }
        p.finish();
        let t = text(&out);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "planning: 20 batches");
        // Every second unit crosses a tenth; the last unit is told by finish.
        assert_eq!(lines.len(), 1 + 9 + 1, "{t}");
        assert!(lines[1].starts_with("planning: 2/20 batches (10%)"), "{}", lines[1]);
        assert!(lines[1..10].iter().all(|l| l.contains("eta ")), "{t}");
        assert!(lines[10].starts_with("planning: 20 batches in "), "{}", lines[10]);
    }

    #[test]
    fn off_writes_nothing_and_live_redraws_one_line() {
        let out = Shared::default();
        let p = Progress::to(Box::new(out.clone()), Mode::Off, "setup", 3, "shapes");
        p.inc(3);
        p.finish();
        assert_eq!(text(&out), "");
        let out = Shared::default();
        let p = Progress::to(Box::new(out.clone()), Mode::Live, "setup", 3, "shapes");
        p.inc(1);
        p.finish();
        let t = text(&out);
        assert!(t.starts_with('\r') && t.ends_with('\n') && t.matches('\n').count() == 1, "{t:?}");
    }

}
