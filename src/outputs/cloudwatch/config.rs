//! The option tables of both plugins (`cloudwatch_logs`: Fluent Bit's `plugins/out_cloudwatch_logs`;
//! `cloudwatch`: aws/amazon-cloudwatch-logs-for-fluent-bit) read into one output, with Fluent
//! Bit's and the Go plugin's own error texts for required options.

use aws_sdk_cloudwatchlogs::types::LogGroupClass;

use super::naming::{NameContext, Naming, StreamFallback};
use super::send::GroupSettings;
use super::template::Template;
use super::{CloudWatchOutput, Flavour, MessageFormat};
use crate::cloud::aws::{with_scheme, AwsIdentity};
use crate::config::{ConfigError, Props};
use crate::outputs::Backoff;

/// Requests in flight when `workers` is not set.
const DEFAULT_IN_FLIGHT: usize = 4;
/// Retention periods CloudWatch accepts (days).
const RETENTION_DAYS: [i64; 22] = [
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
];

pub fn build(
    p: &Props,
    instance: &str,
    flavour: Flavour,
    backoff: Backoff,
) -> Result<CloudWatchOutput, ConfigError> {
    let origin = &p.section.origin;
    if p.str("region").is_none() {
        return Err(ConfigError::at(origin, "'region' is a required field"));
    }
    let group_name = p
        .prop("log_group_name")
        .ok_or_else(|| ConfigError::at(origin, "'log_group_name' is a required field"))?;
    let stream_name = p.prop("log_stream_name");
    let prefix = p.prop("log_stream_prefix");
    match (stream_name, prefix, flavour) {
        (None, None, _) => {
            return Err(ConfigError::at(
                origin,
                "Either 'log_stream_name' or 'log_stream_prefix' is required",
            ))
        }
        (Some(_), Some(p), Flavour::FluentBit) => {
            return Err(ConfigError::key(
                p,
                "Either 'log_stream_name' or 'log_stream_prefix' is required, not both",
            ))
        }
        (Some(_), Some(p), Flavour::Go) => {
            return Err(ConfigError::key(p, "either log_stream_name or log_stream_prefix can be configured. They cannot be provided together"))
        }
        _ => {}
    }
    let template = |prop: &crate::config::Property, go: bool| {
        let parsed = if go {
            Template::go(&prop.value)
        } else {
            Template::record_accessor(&prop.value)
        };
        parsed.map_err(|e| ConfigError::key(prop, format!("could not parse the template: {e}")))
    };
    let naming = match flavour {
        Flavour::FluentBit => Naming {
            group: p
                .prop("log_group_template")
                .map(|t| template(t, false))
                .transpose()?,
            group_fallback: group_name.value.clone(),
            stream: p
                .prop("log_stream_template")
                .map(|t| template(t, false))
                .transpose()?,
            stream_fallback: match (stream_name, prefix) {
                (Some(n), _) => StreamFallback::Name(n.value.clone()),
                (None, Some(pre)) => StreamFallback::Prefix(pre.value.clone()),
                (None, None) => unreachable!("checked above"),
            },
            sanitize: false,
        },
        Flavour::Go => Naming {
            group: Some(template(group_name, true)?),
            group_fallback: p.string_or("default_log_group_name", "fluentbit-default"),
            stream: stream_name.map(|s| template(s, true)).transpose()?,
            stream_fallback: match prefix {
                Some(pre) => StreamFallback::Prefix(pre.value.clone()),
                None => StreamFallback::Name(
                    p.string_or("default_log_stream_name", "/fluentbit-default"),
                ),
            },
            sanitize: true,
        },
    };
    let ecs_endpoint = naming.needs_ecs().then(|| {
        crate::cloud::ecs::endpoint_from_env().ok_or_else(|| {
            "ECS_CONTAINER_METADATA_URI_V4 is not set (not running in an ECS task?)".to_string()
        })
    });
    let retention_days = match p.prop("log_retention_days") {
        None => None,
        Some(prop) => match p.int("log_retention_days", 0)? {
            n if n <= 0 => None,
            n if RETENTION_DAYS.contains(&n) => Some(n as i32),
            n => {
                return Err(ConfigError::key(
                    prop,
                    format!("{n} is not a retention CloudWatch accepts ({RETENTION_DAYS:?})"),
                ))
            }
        },
    };
    let class = match p.prop("log_group_class") {
        None => None,
        Some(c) if c.value.is_empty() => None,
        Some(c) => match c.value.to_ascii_uppercase().as_str() {
            "STANDARD" => Some(LogGroupClass::Standard),
            "INFREQUENT_ACCESS" => Some(LogGroupClass::InfrequentAccess),
            _ => {
                return Err(ConfigError::key(
                    c,
                    format!(
                        "The valid values for log_group_class are {{STANDARD, INFREQUENT_ACCESS}}. Invalid input was {}",
                        c.value
                    ),
                ))
            }
        },
    };
    let (auto_create_stream, tags) = match flavour {
        Flavour::FluentBit => (true, Vec::new()),
        Flavour::Go => (
            p.bool("auto_create_stream", true)?,
            parse_tags(p.str("new_log_group_tags").unwrap_or_default()),
        ),
    };
    let mut identity = AwsIdentity::from_props(p, "us-east-1")?;
    if flavour == Flavour::Go {
        if let Some(prop) = p.prop("credentials_endpoint") {
            if !prop.value.starts_with("http://") {
                return Err(ConfigError::key(
                    prop,
                    "credentials_endpoint must be an http:// URL (the ECS or EKS agent's endpoint)",
                ));
            }
            identity.credentials_endpoint =
                Some(crate::cloud::local_http::PrivateUrl(prop.value.clone()));
        }
    }
    // Sent as the SDK's app name (`app/<name>` in the user agent), which allows letters, digits
    // and !#$%&'*+-.^_`|~ only; other characters (Fluent Bit allows any) become '-'.
    let extra_user_agent = p
        .str("extra_user_agent")
        .filter(|ua| !ua.is_empty())
        .map(|ua| {
            let name: String = ua
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c) {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            aws_config::AppName::new(name).expect("only allowed characters")
        });
    let log_format = match p.prop("log_format") {
        None => None,
        Some(f) if f.value.bytes().all(|b| b.is_ascii_graphic()) => Some(f.value.clone()),
        Some(f) => {
            return Err(ConfigError::key(
                f,
                "log_format must be a header value such as json/emf",
            ))
        }
    };
    if let Some(dims) = p.prop("metric_dimensions") {
        if p.str("metric_namespace").is_none() {
            return Err(ConfigError::key(
                dims,
                "metric_dimensions needs metric_namespace",
            ));
        }
    }
    let in_flight = match p.prop("workers") {
        None => DEFAULT_IN_FLIGHT,
        Some(w) => usize::try_from(p.int("workers", 0)?)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| ConfigError::key(w, "workers must be at least 1"))?,
    };
    // Only records from Fluent Bit's cpu/mem metrics inputs become EMF; logferry has none, so
    // these change nothing (as in Fluent Bit with log inputs). `add_entity` needs the
    // kubernetes filter's entity fields, which logferry does not produce.
    p.accept(&["metric_namespace", "metric_dimensions", "add_entity"]);
    Ok(CloudWatchOutput {
        instance: instance.to_string(),
        flavour,
        naming,
        message: MessageFormat {
            log_key: p.str("log_key").map(|k| k.as_bytes().to_vec()),
            trim: flavour == Flavour::Go,
        },
        identity,
        endpoint: p.str("endpoint").map(with_scheme),
        auto_retry_requests: p.bool("auto_retry_requests", true)?,
        extra_user_agent,
        log_format,
        in_flight,
        retry: crate::outputs::RetryPolicy {
            limit: crate::outputs::parse_retry_limit(
                p,
                crate::outputs::default_retry_limit("cloudwatch_logs"),
            )?,
            backoff,
        },
        ecs_endpoint,
        groups: Some(GroupSettings {
            auto_create_group: p.bool("auto_create_group", false)?,
            auto_create_stream,
            retention_days,
            class,
            tags,
        }),
        names: NameContext {
            uuid: crate::outputs::objectstore::key::random_alnum(27),
            ecs: None,
        },
        shared: None,
    })
}

/// `new_log_group_tags`: `k=v,k2=v2`, spaces trimmed, empty keys ignored.
fn parse_tags(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_string(), v.trim().to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_parse_as_the_go_plugin_does() {
        assert_eq!(
            parse_tags(" team = a ,, =x,env=prod,flag"),
            vec![
                ("team".into(), "a".into()),
                ("env".into(), "prod".into()),
                ("flag".into(), String::new())
            ]
        );
    }
}
