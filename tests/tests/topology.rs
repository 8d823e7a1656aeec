//! The netns topology end to end (root only).

use std::time::Duration;

use zmesh_ctl::topology::{Options, PodSpec, Topology};

#[test]
fn no_mesh_baseline() {
    let mut t = Topology::up(Options {
        mesh: false,
        ..Options::default()
    })
    .expect("topology");
    let server = t
        .add_pod(PodSpec::new("demo", "server", 2))
        .expect("server pod");
    let client = t
        .add_pod(PodSpec::new("demo", "client", 1))
        .expect("client pod");
    let _srv = t
        .spawn(
            &server,
            "zmeshctl",
            &["serve-http", "--port", "8080", "--name", "s"],
        )
        .expect("server");
    std::thread::sleep(Duration::from_millis(300));
    for url in [
        format!("http://{}:8080/", server.ip4),
        format!("http://[{}]:8080/", server.ip6),
    ] {
        let out = t
            .run(
                &client,
                "curl",
                &["-sS", "--max-time", "5", &url],
                Duration::from_secs(10),
            )
            .expect("curl");
        assert!(out.success, "{url}: {out:?}");
        println!("{}", out.stdout);
    }
    let fp = t.footprint();
    drop(t);
    assert_eq!(fp.leftovers(), Vec::<String>::new());
}
