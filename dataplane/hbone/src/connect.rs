//! The HTTP/2 CONNECT request that opens a tunnel, its headers, and how the server reads the
//! target back out of `:authority`.

use std::fmt::Write;
use std::net::SocketAddr;

use http::{Method, Request, StatusCode, Uri, Version};

/// Tunnel is up (sent only after the server connected to the target).
pub const STATUS_OK: StatusCode = StatusCode::OK;
/// Not CONNECT, bad authority, or a destination that does not match the connection.
pub const STATUS_BAD_REQUEST: StatusCode = StatusCode::BAD_REQUEST;
/// Denied by authorization policy.
pub const STATUS_UNAUTHORIZED: StatusCode = StatusCode::UNAUTHORIZED;
/// No such workload here, or the target refused the connection.
pub const STATUS_UNAVAILABLE: StatusCode = StatusCode::SERVICE_UNAVAILABLE;

/// Who the client is, sent in the `baggage` header (W3C baggage with Istio's keys).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Baggage {
    pub cluster: String,
    pub namespace: String,
    /// deployment | pod | job | cronjob
    pub workload_type: String,
    pub workload_name: String,
    pub service_name: String,
    pub service_version: String,
    pub region: String,
    pub zone: String,
}

impl Baggage {
    /// Header value; entries with empty values are left out.
    pub fn encode(&self) -> String {
        let wl_key = format!(
            "k8s.{}.name",
            if self.workload_type.is_empty() {
                "deployment"
            } else {
                &self.workload_type
            }
        );
        let entries = [
            ("k8s.cluster.name", &self.cluster),
            ("k8s.namespace.name", &self.namespace),
            (wl_key.as_str(), &self.workload_name),
            ("service.name", &self.service_name),
            ("service.version", &self.service_version),
            ("cloud.region", &self.region),
            ("cloud.availability_zone", &self.zone),
        ];
        let mut out = String::new();
        for (k, v) in entries.iter().filter(|(_, v)| !v.is_empty()) {
            if !out.is_empty() {
                out.push(',');
            }
            let _ = write!(out, "{k}={v}");
        }
        out
    }

    /// Reads a `baggage` header; unknown keys are ignored, malformed entries skipped.
    pub fn decode(value: &str) -> Baggage {
        let mut b = Baggage::default();
        for entry in value.split(',') {
            let Some((k, v)) = entry.split_once('=') else {
                continue;
            };
            let (k, v) = (k.trim(), v.trim().to_string());
            match k {
                "k8s.cluster.name" => b.cluster = v,
                "k8s.namespace.name" => b.namespace = v,
                "service.name" => b.service_name = v,
                "service.version" => b.service_version = v,
                "cloud.region" => b.region = v,
                "cloud.availability_zone" => b.zone = v,
                _ => {
                    if let Some(t) = k.strip_prefix("k8s.").and_then(|r| r.strip_suffix(".name"))
                        && matches!(t, "deployment" | "pod" | "job" | "cronjob")
                    {
                        b.workload_type = t.to_string();
                        b.workload_name = v;
                    }
                }
            }
        }
        b
    }
}

/// One tunnel request.
#[derive(Clone, Debug)]
pub struct ConnectRequest<'a> {
    /// Where the tunnel goes: `:authority`.
    pub target: SocketAddr,
    /// The original client address, for `forwarded: for=`.
    pub client: SocketAddr,
    /// Service hostname when the connection was addressed to a service.
    pub service_host: Option<&'a str>,
    pub baggage: &'a Baggage,
}

impl ConnectRequest<'_> {
    /// The HTTP/2 request, with `baggage`, `forwarded` and a fresh `traceparent`.
    pub fn to_request(&self) -> Request<()> {
        let authority = self.target.to_string();
        let uri = Uri::try_from(authority.as_str()).unwrap_or_default();
        let mut forwarded = format!("for=\"{}\"", self.client);
        if let Some(host) = self.service_host {
            let _ = write!(forwarded, ";host={host}");
        }
        let mut req = Request::new(());
        *req.method_mut() = Method::CONNECT;
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_2;
        let h = req.headers_mut();
        // Header values are built from addresses, hex and our own config, all visible ASCII.
        if let Ok(v) = forwarded.parse() {
            h.insert("forwarded", v);
        }
        let baggage = self.baggage.encode();
        if !baggage.is_empty()
            && let Ok(v) = baggage.parse()
        {
            h.insert("baggage", v);
        }
        if let Ok(v) = traceparent().parse() {
            h.insert("traceparent", v);
        }
        req
    }
}

/// A W3C traceparent with random trace and parent ids.
pub fn traceparent() -> String {
    let trace: u128 = rand::random::<u128>() | 1;
    let parent: u64 = rand::random::<u64>() | 1;
    format!("00-{trace:032x}-{parent:016x}-00")
}

/// The target of a CONNECT, from `:authority`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authority {
    /// `ip:port` (IPv6 in brackets).
    Addr(SocketAddr),
    /// `hostname:port`, resolved by the server through its services.
    Host(String, u16),
}

/// Parses `:authority`. Anything but `ip:port` or a DNS-style `hostname:port` is refused.
pub fn parse_authority(s: &str) -> Option<Authority> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Some(Authority::Addr(addr));
    }
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(valid_label) {
        return None;
    }
    Some(Authority::Host(host.to_ascii_lowercase(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_carries_istio_headers() {
        let bag = Baggage {
            cluster: "Kubernetes".into(),
            namespace: "demo".into(),
            workload_type: "deployment".into(),
            workload_name: "client".into(),
            service_name: "client".into(),
            ..Baggage::default()
        };
        let req = ConnectRequest {
            target: "[fd00::5]:8080".parse().expect("addr"),
            client: "[fd00::1]:41234".parse().expect("addr"),
            service_host: Some("echo.demo.svc.cluster.local"),
            baggage: &bag,
        }
        .to_request();
        assert_eq!(req.method(), Method::CONNECT);
        assert_eq!(
            req.uri().authority().map(|a| a.as_str()),
            Some("[fd00::5]:8080")
        );
        let h = req.headers();
        assert_eq!(
            h["forwarded"],
            "for=\"[fd00::1]:41234\";host=echo.demo.svc.cluster.local"
        );
        assert_eq!(
            h["baggage"],
            "k8s.cluster.name=Kubernetes,k8s.namespace.name=demo,k8s.deployment.name=client,service.name=client"
        );
        let tp = h["traceparent"].to_str().expect("ascii");
        assert_eq!(tp.len(), 55);
        assert!(tp.starts_with("00-") && tp.ends_with("-00"));
        assert_eq!(Baggage::decode(h["baggage"].to_str().expect("ascii")), bag);
    }

    #[test]
    fn authority_forms() {
        assert_eq!(
            parse_authority("10.0.0.1:80"),
            Some(Authority::Addr("10.0.0.1:80".parse().expect("addr")))
        );
        assert_eq!(
            parse_authority("Echo.demo.svc.cluster.local:8080"),
            Some(Authority::Host("echo.demo.svc.cluster.local".into(), 8080))
        );
        for bad in [
            "",
            "10.0.0.1",
            ":80",
            "host:0",
            "host:99999",
            "ho st:80",
            "-a.b:1",
            "a..b:1",
            "x:y",
        ] {
            assert_eq!(parse_authority(bad), None, "{bad:?} must be refused");
        }
    }
}
