//! Reading CloudWatch Logs back from a test peer (moto), and the ECS task metadata document.

use aws_sdk_cloudwatchlogs::Client;

use super::peers::{block_on, Peers};

pub fn logs_client(endpoint: &str, key: &str, secret: &str) -> Client {
    logs_client_in(endpoint, key, secret, "us-east-1")
}

pub fn logs_client_in(endpoint: &str, key: &str, secret: &str, region: &str) -> Client {
    let conf = aws_sdk_cloudwatchlogs::config::Builder::new()
        .behavior_version(aws_sdk_cloudwatchlogs::config::BehaviorVersion::latest())
        .region(aws_sdk_cloudwatchlogs::config::Region::new(
            region.to_string(),
        ))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_cloudwatchlogs::config::Credentials::new(
            key, secret, None, None, "test",
        ))
        .build();
    Client::from_conf(conf)
}

pub fn moto(p: &Peers) -> Client {
    logs_client(p.var("MOTO_ENDPOINT"), "test", "test")
}

/// Every message of a stream (empty while the group or stream does not exist).
pub fn messages(client: &Client, group: &str, stream: &str) -> Vec<String> {
    block_on(async {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = client
                .get_log_events()
                .log_group_name(group)
                .log_stream_name(stream)
                .start_from_head(true)
                .set_next_token(token.clone())
                .send()
                .await;
            let Ok(page) = page else { return out };
            let events = page.events();
            out.extend(
                events
                    .iter()
                    .filter_map(|e| e.message().map(str::to_string)),
            );
            let next = page.next_forward_token().map(str::to_string);
            if events.is_empty() || next.is_none() || next == token {
                return out;
            }
            token = next;
        }
    })
}

pub fn stream_names(client: &Client, group: &str) -> Vec<String> {
    block_on(async {
        client
            .describe_log_streams()
            .log_group_name(group)
            .send()
            .await
            .map(|o| {
                o.log_streams()
                    .iter()
                    .filter_map(|s| s.log_stream_name().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// The task metadata endpoint v4 `/task` document, as the ECS agent serves it (trimmed).
pub fn task_metadata(cluster: &str) -> String {
    serde_json::json!({
        "Cluster": cluster,
        "TaskARN": format!("arn:aws:ecs:us-west-2:111111111111:task/{cluster}/158d1c8083dd49d6b527399fd6414f5c"),
        "Family": "firelens-example-cloudwatch",
        "Revision": "1",
        "DesiredStatus": "RUNNING",
        "KnownStatus": "RUNNING",
        "LaunchType": "EC2",
        "Containers": [{"Name": "log_router", "DockerId": "abc", "Image": "logferry"}]
    })
    .to_string()
}

/// The retention of the first group whose name starts with `group`.
pub fn retention_days(client: &Client, group: &str) -> Option<i32> {
    block_on(async {
        client
            .describe_log_groups()
            .log_group_name_prefix(group)
            .send()
            .await
            .unwrap()
            .log_groups()[0]
            .retention_in_days()
    })
}
