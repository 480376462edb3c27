//! A small `tracing` subscriber that writes one line per event to standard error.
//!
//! The VMM logs little (setup steps at debug, device errors, its stop reason), so this replaces
//! `tracing-subscriber`'s formatter, whose code would add to the VMM's resident memory.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Writes events at `max_level` and above to standard error.
pub struct StderrLogger {
    max_level: Level,
    next_span: AtomicU64,
}

impl StderrLogger {
    /// A logger for `max_level` and above.
    pub fn new(max_level: Level) -> Self {
        StderrLogger {
            max_level,
            next_span: AtomicU64::new(1),
        }
    }

    /// Installs the logger as the global default; a second call keeps the first logger.
    pub fn install(max_level: Level) {
        let _ = tracing::subscriber::set_global_default(StderrLogger::new(max_level));
    }
}

/// Collects an event's message and fields as `message key=value ...`.
#[derive(Default)]
struct LineVisitor {
    message: String,
    fields: String,
}

impl Visit for LineVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}

impl Subscriber for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        // Levels compare by verbosity: ERROR < WARN < ... < TRACE.
        *metadata.level() <= self.max_level
    }

    fn new_span(&self, _attributes: &Attributes<'_>) -> Id {
        Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed))
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut visitor = LineVisitor::default();
        event.record(&mut visitor);
        let line = format!(
            "isobench-vmm: {}: {}{}\n",
            event.metadata().level().as_str().to_ascii_lowercase(),
            visitor.message,
            visitor.fields
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logger_filters_by_level() {
        let enabled = |level| {
            let dispatch = tracing::Dispatch::new(StderrLogger::new(level));
            tracing::dispatcher::with_default(&dispatch, || tracing::enabled!(Level::INFO))
        };
        assert!(!enabled(Level::WARN));
        assert!(enabled(Level::DEBUG));
    }

    #[test]
    fn visitor_formats_message_and_fields() {
        let mut visitor = LineVisitor::default();
        visitor.message.push_str("vCPU stopped");
        visitor.fields.push_str(" vcpu=0");
        assert_eq!(
            format!("{}{}", visitor.message, visitor.fields),
            "vCPU stopped vcpu=0"
        );
    }
}
