use super::*;
use zmesh_hbone::WorkloadCert;
use zmesh_hbone::ca::{DevCa, LeafSpec};

const T0: u64 = 1_800_000_000;

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn cert(ca: &DevCa, id: &Identity, from: u64, to: u64) -> Arc<IdentityCert> {
    let spec = LeafSpec {
        uris: vec![id.to_uri()],
        not_before: at(from),
        not_after: at(to),
    };
    let (chain, key) = ca.issue_raw(&spec).unwrap();
    let cert = WorkloadCert::new(chain, key, vec![ca.root().clone()]).unwrap();
    let server = zmesh_hbone::tls::server_config(&cert).unwrap();
    Arc::new(IdentityCert { cert, server })
}

fn ids(list: &[&Identity]) -> BTreeSet<Identity> {
    list.iter().map(|i| (*i).clone()).collect()
}

#[test]
fn renews_at_half_of_the_lifetime() {
    let ca = DevCa::generate("t").unwrap();
    let web = Identity::new("", "demo", "web");
    let mut book = CertBook::default();
    book.set_wanted(&ids(&[&web]), at(T0));
    assert_eq!(book.missing(at(T0)), vec![web.clone()]);
    assert_eq!(book.take_due(at(T0)), vec![web.clone()]);
    assert!(
        book.take_due(at(T0)).is_empty(),
        "in flight is not due twice"
    );
    assert_eq!(book.next_due(), None);
    // A 4 s certificate issued at T0 is renewed at T0+2.
    book.succeeded(&web, cert(&ca, &web, T0, T0 + 4));
    assert!(book.missing(at(T0)).is_empty());
    assert_eq!(book.next_due(), Some(at(T0 + 2)));
    assert!(book.take_due(at(T0 + 1)).is_empty());
    assert_eq!(book.take_due(at(T0 + 2)), vec![web.clone()]);
    // A 24 h certificate issued at T0+2 is renewed 12 h later.
    book.succeeded(&web, cert(&ca, &web, T0 + 2, T0 + 2 + 86_400));
    assert_eq!(book.next_due(), Some(at(T0 + 2 + 43_200)));
}

#[test]
fn failures_back_off_and_keep_the_old_cert_until_it_expires() {
    let ca = DevCa::generate("t").unwrap();
    let web = Identity::new("", "demo", "web");
    let mut book = CertBook::default();
    book.set_wanted(&ids(&[&web]), at(T0));
    book.take_due(at(T0));
    book.succeeded(&web, cert(&ca, &web, T0, T0 + 100));
    let now = at(T0 + 50);
    assert_eq!(book.take_due(now), vec![web.clone()]);
    let d1 = book.failed(&web, now, 1.0).unwrap();
    assert_eq!(book.next_due(), Some(now + d1));
    book.take_due(now + d1);
    let d2 = book.failed(&web, now + d1, 1.0).unwrap();
    assert_eq!(d2, d1 * 2, "doubles");
    assert!(
        book.usable(at(T0 + 99)).contains_key(&web),
        "old cert kept while valid"
    );
    assert!(
        !book.usable(at(T0 + 100)).contains_key(&web),
        "not past its expiry"
    );
    assert_eq!(book.missing(at(T0 + 100)), vec![web.clone()]);
    // The cap: many failures never wait longer than 150 s.
    let mut t = at(T0 + 100);
    for _ in 0..20 {
        book.take_due(t);
        let d = book.failed(&web, t, 1.0).unwrap();
        assert!(d <= Duration::from_secs(150));
        t += d;
    }
}

#[test]
fn drops_certs_of_identities_that_left() {
    let ca = DevCa::generate("t").unwrap();
    let web = Identity::new("", "demo", "web");
    let db = Identity::new("", "demo", "db");
    let mut book = CertBook::default();
    book.set_wanted(&ids(&[&web, &db]), at(T0));
    assert_eq!(book.take_due(at(T0)), vec![db.clone(), web.clone()]);
    book.succeeded(&web, cert(&ca, &web, T0, T0 + 100));
    assert!(
        book.set_wanted(&ids(&[&db]), at(T0 + 1)),
        "web's cert dropped"
    );
    assert!(book.usable(at(T0 + 1)).is_empty());
    // A late answer for an identity that left is ignored.
    book.succeeded(&web, cert(&ca, &web, T0, T0 + 100));
    assert!(book.usable(at(T0 + 1)).is_empty());
    assert!(!book.set_wanted(&ids(&[&db]), at(T0 + 2)));
}
