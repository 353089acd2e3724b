//! Chrome/Perfetto trace-event timelines: one process per GPU with a compute track and a
//! communication track, spans in microseconds.

use crate::cluster::Cluster;
use crate::cost::Stage;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Timeline {
    #[serde(rename = "traceEvents")]
    pub events: Vec<Event>,
    #[serde(rename = "displayTimeUnit")]
    pub display_time_unit: &'static str,
}

/// A trace event: `ph` "X" is a complete span, "M" names a process or thread.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub name: String,
    pub ph: &'static str,
    pub pid: u32,
    pub tid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ts: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dur: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cat: Option<&'static str>,
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub args: serde_json::Value,
}

const COMPUTE: u32 = 0;
const COMM: u32 = 1;

impl Timeline {
    /// An empty timeline with a named process per GPU and its two tracks.
    pub fn new(cluster: &Cluster) -> Timeline {
        let mut events = Vec::new();
        for gpu in 0..cluster.gpus() {
            let meta = |name: &str, tid: u32, args: serde_json::Value| Event {
                name: name.into(),
                ph: "M",
                pid: gpu,
                tid,
                ts: None,
                dur: None,
                cat: None,
                args,
            };
            let named = |name: String| serde_json::json!({ "name": name });
            events.push(meta("process_name", 0, named(format!("GPU {gpu} (node {})", gpu / cluster.gpus_per_node))));
            // The trace-event format reads a sort index from `args.sort_index`, as a number.
            events.push(meta("process_sort_index", 0, serde_json::json!({ "sort_index": gpu })));
            events.push(meta("thread_name", COMPUTE, named("compute".into())));
            events.push(meta("thread_name", COMM, named("communication".into())));
        }
        Timeline {
            events,
            display_time_unit: "ms",
        }
    }

    fn span(&mut self, gpu: u32, tid: u32, name: &str, cat: &'static str, start_s: f64, dur_s: f64) {
        if dur_s <= 0.0 {
            return;
        }
        self.events.push(Event {
            name: name.to_string(),
            ph: "X",
            pid: gpu,
            tid,
            ts: Some(start_s * 1e6),
            dur: Some(dur_s * 1e6),
            cat: Some(cat),
            args: serde_json::Value::Null,
        });
    }

    /// One repetition of a stage on the group's `ranks`, from `start` to `end`; `flight_end` is
    /// when its transfer finished. Exposed transfers come first, overlapped ones run beside the
    /// compute.
    pub fn stage(&mut self, ranks: &[u32], stage: &Stage, start: f64, flight_end: Option<f64>, end: f64) {
        let transfer_end = flight_end.unwrap_or(start);
        let compute_start = if stage.overlapped { start } else { transfer_end };
        for &gpu in ranks {
            if let Some(t) = &stage.transfer {
                self.span(gpu, COMM, t.collective.name(), "communication", start, transfer_end - start);
            }
            self.span(gpu, COMPUTE, &stage.label, "compute", compute_start, (end - compute_start).min(stage.compute_s));
        }
    }

    /// A span on every GPU's communication track.
    pub fn collective_all(&mut self, gpus: u32, name: &str, start: f64, dur: f64) {
        for gpu in 0..gpus {
            self.span(gpu, COMM, name, "communication", start, dur);
        }
    }

    /// A span on every GPU's compute track.
    pub fn compute_all(&mut self, gpus: u32, name: &str, start: f64, dur: f64) {
        for gpu in 0..gpus {
            self.span(gpu, COMPUTE, name, "compute", start, dur);
        }
    }
}
