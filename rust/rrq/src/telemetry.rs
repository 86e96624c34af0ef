//! OpenTelemetry: spans of each attempt in the producer's trace, exported
//! over OTLP/gRPC. All OTel glue lives here.
//!
//! Enabled only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; otherwise no exporter exists
//! and the dispatcher skips every call here. Standard variables apply:
//! `OTEL_SERVICE_NAME` (default `rrq-orchestrator`),
//! `OTEL_EXPORTER_OTLP_PROTOCOL` (only `grpc` is supported), the `OTEL_BSP_*`
//! batch settings, `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_SDK_DISABLED`.
//!
//! For an attempt whose job carries a W3C `trace_parent`, three spans are
//! recorded as children of the producer's span:
//! - `wait <queue>` (INTERNAL): enqueue (or, for later attempts, the run time
//!   of this attempt) → claim;
//! - `dispatch <queue>` (INTERNAL): claim → execute message sent;
//! - `process <queue>` (CONSUMER): execute sent → outcome received; its
//!   context is the `trace_parent` the runner receives.
//!
//! Timestamps are Redis time (see [`crate::clock`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, Span};
use tracing::{info, warn};

use crate::clock::RedisClock;
use crate::dispatcher::Claimed;

/// Service name when `OTEL_SERVICE_NAME` is unset.
pub const DEFAULT_SERVICE_NAME: &str = "rrq-orchestrator";

/// The exporter and tracer; see the module documentation.
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    clock: Arc<RedisClock>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Telemetry {
    /// Builds the exporter when the OTel environment asks for one; `None`
    /// when it does not (or when it cannot be built: tracing is never a
    /// reason not to run jobs). Must run inside the Tokio runtime.
    pub fn from_env(clock: Arc<RedisClock>) -> Option<Arc<Self>> {
        env("OTEL_EXPORTER_OTLP_ENDPOINT").or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))?;
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return None;
        }
        let protocol = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|| "grpc".to_owned());
        if protocol != "grpc" {
            warn!(
                protocol,
                "OTEL_EXPORTER_OTLP_PROTOCOL: only \"grpc\" is supported; tracing is off"
            );
            return None;
        }
        let exporter = match opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
        {
            Ok(e) => e,
            Err(e) => {
                warn!("cannot build the OTLP exporter; tracing is off: {e}");
                return None;
            }
        };
        let mut resource = opentelemetry_sdk::Resource::builder();
        let service = env("OTEL_SERVICE_NAME");
        if service.is_none() {
            resource = resource.with_service_name(DEFAULT_SERVICE_NAME);
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("rrq");
        info!(
            service = service.as_deref().unwrap_or(DEFAULT_SERVICE_NAME),
            "OpenTelemetry export enabled (OTLP/gRPC)"
        );
        Some(Arc::new(Self {
            provider,
            tracer,
            clock,
        }))
    }

    /// Records `wait` and `dispatch` of an attempt about to be sent to a
    /// runner and starts its `process` span. `None` when the job has no
    /// valid `trace_parent`.
    pub fn begin(&self, c: &Claimed, runner: &str, handler: &str) -> Option<AttemptTrace> {
        let parent = parse_traceparent(&c.job.trace_parent, &c.job.trace_state)?;
        let parent_cx = Context::new().with_remote_span_context(parent);
        let queue = c.queue.as_str();
        let common = |op: &'static str, kind: &'static str| {
            vec![
                KeyValue::new("messaging.system", "rrq"),
                KeyValue::new("messaging.operation.type", kind),
                KeyValue::new("messaging.operation.name", op),
                KeyValue::new("messaging.destination.name", queue.to_owned()),
                KeyValue::new("messaging.message.id", c.job.id.clone()),
                KeyValue::new("rrq.job.attempt", c.job.attempt),
                KeyValue::new("rrq.job.function", c.job.function_name.clone()),
                KeyValue::new("rrq.runner.name", runner.to_owned()),
                KeyValue::new("rrq.job.handler", handler.to_owned()),
            ]
        };
        let claim_ms = c.claim_now_ms;
        let sent_ms = self.clock.now_ms().max(claim_ms);

        // wait: for a first attempt it starts at the enqueue; for a later one
        // at this attempt's run time (its backoff ended then).
        let wait_start = if c.job.attempt <= 1 {
            c.job.enqueued_at_ms
        } else {
            c.job.run_at_ms
        };
        let span = self
            .tracer
            .span_builder(format!("wait {queue}"))
            .with_kind(SpanKind::Internal)
            .with_attributes(common("wait", "receive"))
            .with_start_time(epoch(wait_start.min(claim_ms)))
            .start_with_context(&self.tracer, &parent_cx);
        span.end_at(claim_ms);

        let dispatch = self
            .tracer
            .span_builder(format!("dispatch {queue}"))
            .with_kind(SpanKind::Internal)
            .with_start_time(epoch(claim_ms))
            .with_attributes(common("dispatch", "receive"))
            .start_with_context(&self.tracer, &parent_cx);
        dispatch.end_at(sent_ms);

        let process = self
            .tracer
            .span_builder(format!("process {queue}"))
            .with_kind(SpanKind::Consumer)
            .with_start_time(epoch(sent_ms))
            .with_attributes(common("process", "process"))
            .start_with_context(&self.tracer, &parent_cx);
        let sc = process.span_context().clone();
        Some(AttemptTrace {
            traceparent: format_traceparent(&sc),
            tracestate: sc.trace_state().header(),
            span: Some(process),
            clock: self.clock.clone(),
            started_ms: sent_ms,
        })
    }

    /// Flushes and stops the exporter (waits at most `timeout`).
    pub async fn shutdown(&self, timeout: Duration) {
        let provider = self.provider.clone();
        let flush = tokio::task::spawn_blocking(move || {
            let _ = provider.force_flush();
            provider.shutdown()
        });
        match tokio::time::timeout(timeout, flush).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!("OpenTelemetry shutdown: {e}"),
            Ok(Err(e)) => warn!("OpenTelemetry shutdown: {e}"),
            Err(_) => warn!("OpenTelemetry shutdown timed out"),
        }
    }
}

trait EndAt {
    fn end_at(self, redis_ms: i64);
}

impl EndAt for Span {
    fn end_at(mut self, redis_ms: i64) {
        self.end_with_timestamp(epoch(redis_ms));
    }
}

/// The `process` span of one attempt, ended when its outcome is known.
pub struct AttemptTrace {
    /// `traceparent` of the `process` span: what the runner receives.
    pub traceparent: String,
    /// `tracestate` that goes with it.
    pub tracestate: String,
    span: Option<Span>,
    clock: Arc<RedisClock>,
    /// When the span started (Redis time): it may come from the claim's own
    /// clock reading, ahead of this process's estimate of Redis time.
    started_ms: i64,
}

impl std::fmt::Debug for AttemptTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttemptTrace")
            .field("traceparent", &self.traceparent)
            .finish_non_exhaustive()
    }
}

impl AttemptTrace {
    /// Now, by the estimate of Redis time, but never before the span started.
    fn end_ms(&self) -> i64 {
        self.clock.now_ms().max(self.started_ms)
    }

    /// Ends the `process` span as a success.
    pub fn end_ok(mut self) {
        if let Some(span) = self.span.take() {
            span.end_at(self.end_ms());
        }
    }

    /// Ends the `process` span as a failure of `error_type`.
    pub fn end_error(mut self, error_type: &str, message: &str) {
        if let Some(mut span) = self.span.take() {
            span.set_attribute(KeyValue::new("error.type", error_type.to_owned()));
            span.set_status(Status::error(first_line(message).to_owned()));
            span.end_at(self.end_ms());
        }
    }
}

impl Drop for AttemptTrace {
    fn drop(&mut self) {
        if let Some(span) = self.span.take() {
            span.end_at(self.end_ms());
        }
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

fn epoch(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

/// Parses a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`) into a
/// remote span context; `None` when it is empty or malformed.
pub fn parse_traceparent(traceparent: &str, tracestate: &str) -> Option<SpanContext> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2
        || version == "ff"
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let state = tracestate.parse::<TraceState>().unwrap_or_default();
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        state,
    ))
}

/// Formats a span context as a W3C `traceparent`.
pub fn format_traceparent(sc: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = parse_traceparent(tp, "k=v").unwrap();
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(sc.trace_state().header(), "k=v");
        assert_eq!(format_traceparent(&sc), tp);
    }

    #[test]
    fn bad_traceparents_are_ignored() {
        for tp in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-xyz92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(tp, "").is_none(), "{tp}");
        }
    }
}
