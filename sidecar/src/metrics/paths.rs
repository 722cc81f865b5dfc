//! The `path` label of daprd's HTTP server metrics, as daprd 1.18 makes it
//! by default (`http.increasedCardinality: true`): the request path with
//! the parts that name one record rather than a kind of call replaced
//! (state and secret keys dropped, actor ids as `{id}`, workflow instances
//! as `{instanceId}`), everything else as it came.

/// The label daprd gives a request for `path`.
pub fn dapr_path_label(path: &str) -> String {
    if path.is_empty() {
        return String::new();
    }
    let path = normalize(path);
    let rest = path.strip_prefix('/').unwrap_or(&path);
    let mut parts: Vec<&str> = rest.splitn(6, '/').collect();
    if parts.len() < 3 {
        return path;
    }
    let joined = |parts: &[&str]| format!("/{}", parts.join("/"));
    // The app callback form: actors/<type>/<id>/method/<name>.
    if parts[0] == "actors" {
        parts[2] = "{id}";
        return parts.join("/");
    }
    match parts[1] {
        "state" | "secrets" => joined(&parts[..3]),
        "actors" if parts.len() >= 5 => {
            parts[3] = "{id}";
            joined(&parts[..5])
        }
        "workflows" if parts.len() >= 4 => {
            if parts.len() == 4 {
                parts[3] = "{instanceId}";
                return joined(&parts);
            }
            if parts.len() == 5 && parts[4].starts_with("start") {
                return format!("{}/start", joined(&parts[..4]));
            }
            parts[3] = "{instanceId}";
            if parts.len() == 6 && parts[4] == "raiseEvent" && !parts[5].is_empty() {
                parts[5] = "{eventName}";
                return joined(&parts);
            }
            joined(&parts[..5])
        }
        _ => path,
    }
}

/// Runs of slashes made one, and a leading slash.
fn normalize(p: &str) -> String {
    let mut out = String::with_capacity(p.len() + 1);
    if !p.starts_with('/') {
        out.push('/');
    }
    for c in p.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_read_as_daprds() {
        for (path, want) in [
            ("/v1.0/invoke/target/method/orders/123", "/v1.0/invoke/target/method/orders/123"),
            ("/v1.0/state/statestore/key1", "/v1.0/state/statestore"),
            ("/v1.0/state/statestore", "/v1.0/state/statestore"),
            ("//v1.0//secrets/vault/name", "/v1.0/secrets/vault"),
            ("/v1.0/actors/DemoActor/1/method/do", "/v1.0/actors/DemoActor/{id}/method"),
            ("/v1.0/actors/DemoActor/1/timer/t1", "/v1.0/actors/DemoActor/{id}/timer"),
            ("/v1.0/actors/DemoActor", "/v1.0/actors/DemoActor"),
            // daprd drops the leading slash here, and so do we.
            ("/actors/DemoActor/1/method/do", "actors/DemoActor/{id}/method/do"),
            ("/v1.0-beta1/workflows/dapr/abc", "/v1.0-beta1/workflows/dapr/{instanceId}"),
            ("/v1.0-beta1/workflows/dapr/wf/start", "/v1.0-beta1/workflows/dapr/wf/start"),
            ("/v1.0-beta1/workflows/dapr/abc/terminate", "/v1.0-beta1/workflows/dapr/{instanceId}/terminate"),
            (
                "/v1.0-beta1/workflows/dapr/abc/raiseEvent/ev",
                "/v1.0-beta1/workflows/dapr/{instanceId}/raiseEvent/{eventName}",
            ),
            ("/dapr/config", "/dapr/config"),
            ("/healthz", "/healthz"),
            ("", ""),
        ] {
            assert_eq!(dapr_path_label(path), want, "{path}");
        }
    }
}
