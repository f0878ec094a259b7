//! One PutLogEvents request from first attempt to settlement: creating a missing stream (and
//! group, with its retention), retrying the request by itself with the service backoff up to
//! `Retry_Limit`, telling refused credentials and permissions (health fails) from passing
//! failures, and counting what CloudWatch rejected. Invariant 1: a request's events are
//! reported given up only when it was dropped or CloudWatch refused them, never silently.

use std::sync::Arc;

use aws_runtime::auth::PayloadSigningOverride;
use aws_sdk_cloudwatchlogs::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_cloudwatchlogs::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_cloudwatchlogs::error::BoxError;
use aws_sdk_cloudwatchlogs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_cloudwatchlogs::types::LogGroupClass;
use aws_sdk_cloudwatchlogs::Client;
use bytes::Bytes;

use super::batch::Prepared;
use crate::engine::metrics::{HealthWindow, OutputMetrics};

/// Group creation and the settings requests share.
#[derive(Debug)]
pub(super) struct GroupSettings {
    pub(super) auto_create_group: bool,
    pub(super) auto_create_stream: bool,
    pub(super) retention_days: Option<i32>,
    pub(super) class: Option<LogGroupClass>,
    pub(super) tags: Vec<(String, String)>,
}

/// What every request task needs (built at start).
pub(super) struct Shared {
    pub(super) client: Client,
    pub(super) instance: String,
    pub(super) identity: String,
    pub(super) groups: GroupSettings,
    pub(super) log_format: Option<String>,
    pub(super) retry: crate::outputs::RetryPolicy,
    pub(super) metrics: Arc<OutputMetrics>,
    pub(super) health: Arc<HealthWindow>,
}

/// Why a call failed, and what to do about it.
enum Failure {
    /// ResourceNotFoundException: create the stream (and the group), then send again.
    Missing,
    /// Throttling, 5xx, network: retry later.
    Transient(String),
    /// Refused credentials or permissions, a missing group that may not be created: retried
    /// (an administrator may fix it) but health fails meanwhile.
    Permanent(String),
}

fn classify<E>(e: &SdkError<E, aws_sdk_cloudwatchlogs::config::http::HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let denied =
        |status: u16, code: &str| status == 401 || status == 403 || code.contains("AccessDenied");
    match e {
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            let code = s.err().code().unwrap_or_default();
            let text = answer(status, code, s.err().message(), s.raw().body().bytes());
            match code {
                "ResourceNotFoundException" => Failure::Missing,
                "ThrottlingException"
                | "ServiceUnavailableException"
                | "LimitExceededException"
                | "RequestLimitExceeded" => Failure::Transient(text),
                _ if status >= 500 || status == 429 => Failure::Transient(text),
                _ if denied(status, code) => Failure::Permanent(format!("AccessDenied ({text})")),
                _ => Failure::Permanent(text),
            }
        }
        SdkError::ResponseError(r) => {
            let status = r.raw().status().as_u16();
            let text = answer(status, "", None, r.raw().body().bytes());
            if denied(status, "") {
                Failure::Permanent(format!("AccessDenied ({text})"))
            } else {
                Failure::Transient(text)
            }
        }
        SdkError::DispatchFailure(_) if caused_by_credentials(e) => {
            // Credentials that cannot be had (the chain is empty, AssumeRole refused).
            Failure::Permanent(format!("no usable credentials: {}", DisplayErrorContext(e)))
        }
        SdkError::ConstructionFailure(_) => Failure::Permanent(DisplayErrorContext(e).to_string()),
        _ => Failure::Transient(DisplayErrorContext(e).to_string()),
    }
}

/// What the service answered, briefly: status, code and message; when the body was not the
/// JSON the SDK expects (a proxy's page, an XML error), its `<Message>` or its first 200 bytes.
fn answer(status: u16, code: &str, message: Option<&str>, body: Option<&[u8]>) -> String {
    let mut out = format!("HTTP {status}");
    if !code.is_empty() {
        out.push_str(&format!(" {code}"));
    }
    match message {
        Some(m) => out.push_str(&format!(": {m}")),
        None => {
            let body = String::from_utf8_lossy(body.unwrap_or_default());
            let text = match (body.find("<Message>"), body.find("</Message>")) {
                (Some(a), Some(b)) if a < b => &body[a + 9..b],
                _ => body.trim(),
            };
            if !text.is_empty() {
                let mut end = text.len().min(200);
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                out.push_str(&format!(": {}", &text[..end]));
            }
        }
    }
    out
}

fn caused_by_credentials(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<aws_credential_types::provider::error::CredentialsError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

fn is_code<E: ProvideErrorMetadata>(
    e: &SdkError<E, aws_sdk_cloudwatchlogs::config::http::HttpResponse>,
    code: &str,
) -> bool {
    e.as_service_error().and_then(|s| s.code()) == Some(code)
}

/// A PutLogEvents body written in one pass (each message escaped once into one buffer) with its
/// SHA-256, put in place of the SDK's serialization before the SDK signs and sends it. The SDK's
/// per-byte escaping of every message and its portable SHA-256 of the 1 MiB body were most of
/// the output's CPU; everything else (endpoint, credentials, signing, retries, error and
/// response parsing) stays the SDK's. Retries resend the same bytes (no copy).
#[derive(Clone)]
struct PreparedBody {
    body: Bytes,
    sha256_hex: String,
}

impl PreparedBody {
    fn new(group: &str, stream: &str, events: &[Prepared]) -> Self {
        let size: usize = events.iter().map(|e| e.message.len() + 48).sum();
        let mut out = Vec::with_capacity(size + group.len() + stream.len() + 64);
        out.extend_from_slice(b"{\"logGroupName\":");
        crate::json::write_str(&mut out, group.as_bytes(), false);
        out.extend_from_slice(b",\"logStreamName\":");
        crate::json::write_str(&mut out, stream.as_bytes(), false);
        out.extend_from_slice(b",\"logEvents\":[");
        let mut ts = itoa::Buffer::new();
        for (i, e) in events.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"timestamp\":");
            out.extend_from_slice(ts.format(e.ts_ms).as_bytes());
            out.extend_from_slice(b",\"message\":");
            crate::json::write_str(&mut out, e.message.as_bytes(), false);
            out.push(b'}');
        }
        out.extend_from_slice(b"]}");
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &out);
        let mut sha256_hex = String::with_capacity(64);
        for b in digest.as_ref() {
            sha256_hex.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            sha256_hex.push(char::from(b"0123456789abcdef"[usize::from(b & 0xf)]));
        }
        PreparedBody {
            body: out.into(),
            sha256_hex,
        }
    }
}

impl std::fmt::Debug for PreparedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PreparedBody({} bytes)", self.body.len())
    }
}

impl Intercept for PreparedBody {
    fn name(&self) -> &'static str {
        "PreparedBody"
    }

    /// Runs once per call, after serialization and before the first attempt is signed; every
    /// attempt starts from this request.
    fn modify_before_retry_loop(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request_mut();
        request
            .headers_mut()
            .insert("content-length", self.body.len().to_string());
        *request.body_mut() = self.body.clone().into();
        cfg.interceptor_state()
            .store_put(PayloadSigningOverride::Precomputed(self.sha256_hex.clone()));
        Ok(())
    }
}

/// One PutLogEvents request, retried by itself; returns the origins of the events given up.
pub(super) async fn deliver(
    shared: Arc<Shared>,
    group: Arc<str>,
    stream: Arc<str>,
    events: Vec<Prepared>,
) -> Vec<u32> {
    let origins: Vec<u32> = events.iter().map(|e| e.origin).collect();
    let count = events.len();
    let body = PreparedBody::new(&group, &stream, &events);
    drop(events);
    let m = &shared.metrics;
    let mut attempt = 0u32;
    let mut creations = 0;
    loop {
        let log_format = shared.log_format.clone();
        let sent = shared
            .client
            .put_log_events()
            .log_group_name(&*group)
            .log_stream_name(&*stream)
            .customize()
            .interceptor(body.clone())
            .mutate_request(move |r| {
                if let Some(f) = &log_format {
                    r.headers_mut().insert("x-amzn-logs-format", f.clone());
                }
            })
            .send()
            .await;
        let failure = match sent {
            Ok(out) => {
                m.store_failing.set(0);
                return rejected(
                    &shared,
                    &group,
                    &stream,
                    &origins,
                    out.rejected_log_events_info(),
                );
            }
            Err(e) => match classify(&e) {
                Failure::Missing if creations < 2 => {
                    creations += 1;
                    match create_stream(&shared, &group, &stream).await {
                        Ok(()) => continue,
                        Err(f) => f,
                    }
                }
                Failure::Missing => Failure::Transient(DisplayErrorContext(&e).to_string()),
                f => f,
            },
        };
        m.errors.add(1);
        shared.health.error();
        let (output, identity) = (&shared.instance, &shared.identity);
        match &failure {
            Failure::Permanent(why) => {
                m.store_failing.set(1);
                tracing::error!(output = %output, group = %group, stream = %stream, identity = %identity, attempt, "PutLogEvents to log group '{group}' refused: {why} (identity: {identity})");
            }
            Failure::Transient(why) => {
                tracing::warn!(output = %output, group = %group, stream = %stream, attempt, "PutLogEvents failed: {why}");
            }
            Failure::Missing => {
                tracing::warn!(output = %output, group = %group, stream = %stream, attempt, "PutLogEvents failed: the group or stream is missing");
            }
        }
        let Some(wait) = shared.retry.after_failure(attempt) else {
            m.retries_failed.add(1);
            shared.health.retry_failure();
            tracing::error!(output = %output, group = %group, stream = %stream, "[engine] {count} records cannot be retried (Retry_Limit reached): dropped");
            return origins;
        };
        attempt += 1;
        m.retries.add(1);
        m.retried_records.add(count as u64);
        tokio::time::sleep(wait).await;
    }
}

/// Counts and logs the events CloudWatch refused in a successful call.
fn rejected(
    shared: &Shared,
    group: &str,
    stream: &str,
    origins: &[u32],
    info: Option<&aws_sdk_cloudwatchlogs::types::RejectedLogEventsInfo>,
) -> Vec<u32> {
    let Some(info) = info else {
        return Vec::new();
    };
    let n = origins.len();
    let (too_old, expired, too_new_from) = rejected_ranges(n, info);
    let old = too_old.max(expired).min(too_new_from);
    let mut given_up: Vec<u32> = origins[..old].to_vec();
    given_up.extend_from_slice(&origins[too_new_from..]);
    if !given_up.is_empty() {
        shared.metrics.events_rejected.add(given_up.len() as u64);
        tracing::error!(output = %shared.instance, group = %group, stream = %stream,
            "CloudWatch rejected {} events: {} too old, {} expired, {} too new (more than 14 days / the retention period old, or more than 2 hours ahead)",
            given_up.len(), too_old, expired, n - too_new_from);
    }
    given_up
}

/// `(too old, expired, first too new)`: events `[..too_old]`, `[..expired]` and
/// `[too_new_from..]` were refused. End indexes are exclusive (as documented); a reported end
/// index names at least one event (moto reports the last refused index itself).
fn rejected_ranges(
    n: usize,
    info: &aws_sdk_cloudwatchlogs::types::RejectedLogEventsInfo,
) -> (usize, usize, usize) {
    let end = |i: Option<i32>| i.map_or(0, |i| (i.max(1) as usize).min(n));
    (
        end(info.too_old_log_event_end_index()),
        end(info.expired_log_event_end_index()),
        info.too_new_log_event_start_index()
            .map_or(n, |i| (i.max(0) as usize).min(n)),
    )
}

/// Creates the stream, and the group first when it is missing and `auto_create_group` is on
/// (then its retention once, when `log_retention_days` is set).
async fn create_stream(shared: &Shared, group: &str, stream: &str) -> Result<(), Failure> {
    if !shared.groups.auto_create_stream {
        return Err(Failure::Permanent(format!(
            "log stream '{stream}' does not exist in log group '{group}' and auto_create_stream is off"
        )));
    }
    for _ in 0..2 {
        let created = shared
            .client
            .create_log_stream()
            .log_group_name(group)
            .log_stream_name(stream)
            .send()
            .await;
        match created {
            Ok(_) => {
                tracing::info!(output = %shared.instance, group = %group, stream = %stream, "created log stream");
                return Ok(());
            }
            Err(e) if is_code(&e, "ResourceAlreadyExistsException") => return Ok(()),
            Err(e) => match classify(&e) {
                Failure::Missing => create_group(shared, group).await?,
                f => return Err(f),
            },
        }
    }
    Err(Failure::Transient(format!(
        "log group '{group}' still missing after creating it"
    )))
}

async fn create_group(shared: &Shared, group: &str) -> Result<(), Failure> {
    let settings = &shared.groups;
    if !settings.auto_create_group {
        return Err(Failure::Permanent(format!(
            "log group '{group}' does not exist and auto_create_group is off"
        )));
    }
    let mut request = shared
        .client
        .create_log_group()
        .log_group_name(group)
        .set_log_group_class(settings.class.clone());
    for (k, v) in &settings.tags {
        request = request.tags(k, v);
    }
    match request.send().await {
        Ok(_) => tracing::info!(output = %shared.instance, group = %group, "created log group"),
        Err(e) if is_code(&e, "ResourceAlreadyExistsException") => return Ok(()),
        Err(e) => return Err(classify(&e)),
    }
    if let Some(days) = settings.retention_days {
        let set = shared
            .client
            .put_retention_policy()
            .log_group_name(group)
            .retention_in_days(days)
            .send()
            .await;
        match set {
            Ok(_) => {
                tracing::info!(output = %shared.instance, group = %group, "set retention policy to {days} days")
            }
            Err(e) => {
                tracing::error!(output = %shared.instance, group = %group, identity = %shared.identity, "could not set the retention policy to {days} days: {}", DisplayErrorContext(&e))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_brief() {
        assert_eq!(
            answer(400, "InvalidParameterException", Some("bad"), None),
            "HTTP 400 InvalidParameterException: bad"
        );
        let xml = b"<ErrorResponse><Error><Code>AccessDenied</Code><Message>User x is not authorized</Message></Error></ErrorResponse>";
        assert_eq!(
            answer(403, "", None, Some(xml)),
            "HTTP 403: User x is not authorized"
        );
        assert_eq!(answer(502, "", None, Some(b"")), "HTTP 502");
    }

    #[test]
    fn rejected_event_ranges() {
        use aws_sdk_cloudwatchlogs::types::RejectedLogEventsInfo;
        let info = RejectedLogEventsInfo::builder()
            .too_old_log_event_end_index(2)
            .too_new_log_event_start_index(8)
            .build();
        assert_eq!(rejected_ranges(10, &info), (2, 0, 8));
        let info = RejectedLogEventsInfo::builder()
            .expired_log_event_end_index(0)
            .build();
        assert_eq!(rejected_ranges(10, &info), (0, 1, 10));
        let info = RejectedLogEventsInfo::builder()
            .too_new_log_event_start_index(20)
            .build();
        assert_eq!(rejected_ranges(3, &info), (0, 0, 3));
    }
}
