//! Logs as etcd's `--logger zap` writes them, one JSON object a line:
//! `{"caller":"strata_server::server","level":"info","msg":"ready to serve client requests","ts":"2026-12-03T07:00:00.123Z"}`.
//! Tooling waits on etcd's messages in that shape (`"msg":"ready to serve client requests"`,
//! `"published local member to cluster through raft"`, `"serving client traffic securely"`), so
//! Strata logs the same messages under the same keys. Keys come in alphabetical order (a
//! JSON object's order carries no meaning); numbers and booleans stay JSON numbers and booleans.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The zap JSON event format.
#[derive(Debug, Default)]
pub struct Zap;

#[derive(Default)]
struct Fields {
    msg: String,
    rest: Map<String, Value>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.msg = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
        } else {
            self.rest.insert(field.name().to_string(), value);
        }
    }
}

fn level(l: &Level) -> &'static str {
    match *l {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG | Level::TRACE => "debug",
    }
}

/// `2026-12-03T07:00:00.123Z` (zap's ISO 8601 with milliseconds, UTC).
fn timestamp() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.millisecond()
    )
}

impl<S, N> FormatEvent<S, N> for Zap
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert("level".into(), level(meta.level()).into());
        line.insert("ts".into(), timestamp().into());
        line.insert("caller".into(), meta.target().into());
        line.insert("msg".into(), fields.msg.into());
        line.extend(fields.rest);
        writeln!(writer, "{}", Value::Object(line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_has_etcds_keys() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(Zap)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                address = "127.0.0.1:2379",
                n = 3u64,
                "serving client traffic securely"
            );
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let v: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["level"], "info");
        assert_eq!(v["msg"], "serving client traffic securely");
        assert_eq!(v["address"], "127.0.0.1:2379");
        assert_eq!(v["n"], 3);
        assert!(v["ts"].as_str().unwrap().ends_with('Z'));
    }
}
