//! Prometheus lines cut down for people reading the demo's output.

/// `line` (`name{labels} value`) with only the labels that start with one of `keep`.
pub fn shorten(line: &str, keep: &[&str]) -> String {
    let Some((name, rest)) = line.split_once('{') else {
        return line.to_string();
    };
    let Some((labels, value)) = rest.rsplit_once('}') else {
        return line.to_string();
    };
    let kept: Vec<&str> = labels
        .split(',')
        .filter(|l| keep.iter().any(|k| l.starts_with(k)))
        .collect();
    format!("{name}{{{}}}{value}", kept.join(","))
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_only_the_named_labels() {
        let line = r#"istio_tcp_connections_opened_total{reporter="destination",source_principal="spiffe://a",response_flags="-"} 3"#;
        assert_eq!(
            super::shorten(line, &["source_principal", "response_flags"]),
            r#"istio_tcp_connections_opened_total{source_principal="spiffe://a",response_flags="-"} 3"#
        );
        assert_eq!(super::shorten("up 1", &["x"]), "up 1");
    }
}
