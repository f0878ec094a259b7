//! The ECS task metadata endpoint v4 (`ECS_CONTAINER_METADATA_URI_V4/task`): read for the
//! `cloudwatch` output's `$(ecs_*)` templates, and at start to export the `ECS_*` environment
//! the aws-for-fluent-bit init image exports, so configs written for it (`${ECS_CLUSTER}`,
//! `${ECS_TASK_ID}`, …) run without that image. Never overrides a variable already set.

use std::time::Duration;

/// What logferry uses of a task's metadata.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskMetadata {
    pub cluster: String,
    pub task_arn: String,
    pub task_id: String,
    pub family: String,
    pub revision: String,
    pub availability_zone: String,
    pub launch_type: String,
}

/// The endpoint ECS gives the container (v4, or the v3 variable the Go plugin also reads).
pub fn endpoint_from_env() -> Option<String> {
    std::env::var("ECS_CONTAINER_METADATA_URI_V4")
        .or_else(|_| std::env::var("ECS_CONTAINER_METADATA_URI"))
        .ok()
        .filter(|e| !e.is_empty())
}

/// `<endpoint>/task`.
fn task_url(endpoint: &str) -> String {
    format!("{}/task", endpoint.trim_end_matches('/'))
}

/// What was read at start (the metadata of a task does not change while it runs).
static READ_AT_START: std::sync::OnceLock<TaskMetadata> = std::sync::OnceLock::new();

/// GETs `<endpoint>/task` unless it was read at start; errors name the URL and what was wrong.
pub async fn task_metadata(endpoint: &str) -> Result<TaskMetadata, String> {
    if let Some(meta) = READ_AT_START.get() {
        return Ok(meta.clone());
    }
    let url = task_url(endpoint);
    let answer = super::local_http::get(&url, &[], TIMEOUT).await;
    parse(&url, answer)
}

/// [`task_metadata`] outside a runtime (at start, before the engine's runtime exists).
pub fn task_metadata_blocking(endpoint: &str) -> Result<TaskMetadata, String> {
    let url = task_url(endpoint);
    let answer = super::local_http::get_blocking(&url, &[], TIMEOUT);
    parse(&url, answer)
}

const TIMEOUT: Duration = Duration::from_secs(5);

fn parse(url: &str, answer: std::io::Result<(u16, Vec<u8>)>) -> Result<TaskMetadata, String> {
    let (status, body) = answer.map_err(|e| format!("GET {url}: {e}"))?;
    if status != 200 {
        return Err(format!("GET {url}: HTTP {status}"));
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Task {
        cluster: String,
        #[serde(rename = "TaskARN")]
        task_arn: String,
        #[serde(default)]
        family: String,
        #[serde(default)]
        revision: String,
        #[serde(default)]
        availability_zone: String,
        #[serde(default)]
        launch_type: String,
    }
    let task: Task = serde_json::from_slice(&body)
        .map_err(|e| format!("GET {url}: unexpected document ({e})"))?;
    let task_id = task
        .task_arn
        .rsplit('/')
        .next()
        .filter(|id| !id.is_empty() && task.task_arn.starts_with("arn:"))
        .ok_or_else(|| format!("GET {url}: '{}' is not a task ARN", task.task_arn))?
        .to_string();
    Ok(TaskMetadata {
        cluster: task.cluster,
        task_arn: task.task_arn,
        task_id,
        family: task.family,
        revision: task.revision,
        availability_zone: task.availability_zone,
        launch_type: task.launch_type,
    })
}

/// The variables the init image exports, from `meta` (the region is the task ARN's).
pub fn init_env(meta: &TaskMetadata) -> Vec<(&'static str, String)> {
    let region = meta.task_arn.split(':').nth(3).unwrap_or_default();
    let mut vars = vec![
        ("ECS_CLUSTER", meta.cluster.clone()),
        ("ECS_TASK_ARN", meta.task_arn.clone()),
        ("ECS_TASK_ID", meta.task_id.clone()),
        ("ECS_FAMILY", meta.family.clone()),
        ("ECS_REVISION", meta.revision.clone()),
        ("AWS_AVAILABILITY_ZONE", meta.availability_zone.clone()),
        ("ECS_LAUNCH_TYPE", meta.launch_type.clone()),
        ("AWS_REGION", region.to_string()),
    ];
    if !meta.family.is_empty() {
        vars.push((
            "ECS_TASK_DEFINITION",
            format!("{}:{}", meta.family, meta.revision),
        ));
    }
    vars.retain(|(_, v)| !v.is_empty());
    vars
}

/// In an ECS task, exports [`init_env`]'s variables that are not set yet, before the config is
/// read. Returns what was exported, or why nothing was (the caller logs it; a config that uses
/// the variables then reports them unset).
pub fn export_init_env() -> Result<Vec<&'static str>, String> {
    let Some(endpoint) = endpoint_from_env() else {
        return Ok(Vec::new());
    };
    let meta = task_metadata_blocking(&endpoint)?;
    let meta = READ_AT_START.get_or_init(|| meta);
    let mut exported = Vec::new();
    for (name, value) in init_env(meta) {
        if std::env::var_os(name).is_none() {
            // SAFETY: called from `main` before any other thread exists.
            unsafe { std::env::set_var(name, value) };
            exported.push(name);
        }
    }
    Ok(exported)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_env_follows_the_init_image() {
        let meta = TaskMetadata {
            cluster: "prod".into(),
            task_arn: "arn:aws:ecs:us-west-2:111111111111:task/prod/abc123".into(),
            task_id: "abc123".into(),
            family: "web".into(),
            revision: "3".into(),
            availability_zone: "us-west-2a".into(),
            launch_type: "FARGATE".into(),
        };
        let env = init_env(&meta);
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("ECS_TASK_DEFINITION"), Some("web:3"));
        assert_eq!(get("AWS_REGION"), Some("us-west-2"));
        assert_eq!(get("ECS_TASK_ID"), Some("abc123"));
        assert_eq!(env.len(), 9);
    }
}
