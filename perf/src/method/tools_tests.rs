use super::*;

/// sockperf 3.7's output, colour codes included, as it prints it.
const SOCKPERF: &str = "sockperf: \u{1b}[2;35m== version #3.7-no.git == \u{1b}[0m
sockperf[CLIENT] send on:sockperf: using recvfrom() to block on socket(s)

[ 0] IP = 127.0.0.1       PORT = 11222 # TCP
sockperf: Warmup stage (sending a few dummy messages)...
sockperf: Starting test...
sockperf: Test end (interrupted by timer)
sockperf: Test ended
sockperf: [Total Run] RunTime=2.001 sec; Warm up time=400 msec; SentMessages=2001; ReceivedMessages=2000
sockperf: ========= Printing statistics for Server No: 0
sockperf: [Valid Duration] RunTime=1.550 sec; SentMessages=1551; ReceivedMessages=1551
sockperf: \u{1b}[2;35m====> avg-rtt=475.487 (std-dev=351.985)\u{1b}[0m
sockperf: # dropped messages = 0; # duplicated messages = 0; # out-of-order messages = 0
sockperf: Summary: Round trip is 475.487 usec
sockperf: \u{1b}[2;35mTotal 1551 observations\u{1b}[0m; each percentile contains 15.51 observations
sockperf: ---> <MAX> observation = 8890.631
sockperf: ---> percentile 99.999 = 8890.631
sockperf: ---> percentile 99.990 = 8890.631
sockperf: ---> percentile 99.900 = 3741.244
sockperf: ---> percentile 99.000 = 1530.288
sockperf: ---> percentile 90.000 =  648.096
sockperf: ---> percentile 75.000 =  492.757
sockperf: ---> percentile 50.000 =  420.873
sockperf: ---> percentile 25.000 =  378.694
sockperf: ---> <MIN> observation =   31.158
";

#[test]
fn sockperf_numbers() {
    let s = parse_sockperf(SOCKPERF).expect("parse");
    assert_eq!(s.round_trips, 1551);
    assert_eq!(s.seconds, 1.55);
    assert!((s.round_trips_per_s - 1000.6).abs() < 0.1, "{s:?}");
    assert_eq!(
        (s.avg_us, s.p50_us, s.p90_us, s.p99_us, s.p999_us, s.max_us),
        (475.487, 420.873, 648.096, 1530.288, 3741.244, 8890.631)
    );
}

#[test]
fn sockperf_changed_output_is_an_error() {
    let no_p99 = SOCKPERF.replace("percentile 99.000", "pct 99");
    let e = parse_sockperf(&no_p99).expect_err("must fail");
    assert!(e.to_string().contains("percentile 99.000"), "{e}");
    let no_window = SOCKPERF.replace("[Valid Duration]", "[Window]");
    assert!(parse_sockperf(&no_window).is_err());
    assert!(parse_sockperf("sockperf: connection refused").is_err());
}

#[test]
fn iperf_receiver_side() {
    let json = r#"{"start":{},"intervals":[],"end":{
        "sum_sent":{"bytes":1906966528,"seconds":1.0039,"bits_per_second":1.5e10,"retransmits":21},
        "sum_received":{"bytes":1906900000,"seconds":1.003961,"bits_per_second":15195542679.4}}}"#;
    let i = parse_iperf(json).expect("parse");
    assert_eq!(i.bytes_received, 1_906_900_000);
    assert_eq!(i.retransmits, Some(21));
    assert_eq!(i.bits_per_second, 15_195_542_679.4);
    let err = r#"{"start":{},"intervals":[],"end":{},"error":"unable to connect to server: Connection refused"}"#;
    let e = parse_iperf(err).expect_err("error");
    assert!(e.to_string().contains("Connection refused"), "{e}");
    assert!(parse_iperf(r#"{"end":{}}"#).is_err());
    assert!(parse_iperf("iperf3: error").is_err());
}

#[test]
fn ab_summary() {
    let text = "Concurrency Level:      8
Time taken for tests:   2.000 seconds
Complete requests:      14954
Failed requests:        0
Total transferred:      2168620 bytes
Requests per second:    7476.67 [#/sec] (mean)
";
    let a = parse_ab(text).expect("parse");
    assert_eq!((a.complete, a.failed, a.non_2xx), (14954, 0, 0));
    assert_eq!((a.seconds, a.requests_per_s), (2.0, 7476.67));
    let e = parse_ab(&text.replace("Requests per second", "Rate")).expect_err("missing");
    assert!(e.to_string().contains("Requests per second"), "{e}");
    let non = format!("{text}Non-2xx responses:      12\n");
    assert_eq!(parse_ab(&non).expect("parse").non_2xx, 12);
}

#[test]
fn openssl_machine_readable() {
    let text = "+DT:AES-256-GCM:1:16384\n+R:187067:AES-256-GCM:0.990000\n+H:16384\n+F:25:AES-256-GCM:3095864371.72\n";
    assert_eq!(
        parse_openssl_speed(text, "aes-256-gcm").expect("parse"),
        3_095_864_371.72
    );
    assert!(parse_openssl_speed(text, "AES-128-GCM").is_err());
}

#[test]
fn missing_tool_names_the_package() {
    let e = which("surely-not-a-zmesh-tool", "some-package").expect_err("absent");
    assert!(e.to_string().contains("some-package"), "{e}");
    assert!(which("sh", "dash").is_ok());
}
