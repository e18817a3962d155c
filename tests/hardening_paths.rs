//! The path normaliser works on bytes: raw non-ASCII bytes beside a %-escape reach the
//! upstream as sent (they were once re-encoded as Latin-1 characters, `/p/%41Ûb` →
//! `/p/AÃ\u{9b}b`), and normalising a normalised path changes nothing (a property test).

mod common;

use common::*;
use proptest::prelude::*;
use scopegate::http::path::normalize_path;

/// One open route, `p` on `/p/*`.
fn routes() -> String {
    open_route("p", "/p")
}

#[tokio::test]
async fn raw_non_ascii_beside_an_escape_reaches_the_upstream_unchanged() {
    let env = Env::start(&routes()).await;
    for (sent, forwarded) in [
        ("/p/%41Ûb", "/p/AÛb"),
        ("/p/Ûb", "/p/Ûb"),
        ("/p/%7e/日本?q=%41Û", "/p/~/日本?q=%41Û"),
        ("/p/%c3%9b/Û", "/p/%C3%9B/Û"),
        ("/p/%20é%41", "/p/%20éA"),
    ] {
        env.upstream.clear();
        let reply = raw_request(env.gw.addr, "GET", sent).await;
        assert_eq!(reply.status, 200, "{sent}: {}", reply.raw);
        let seen = env.upstream.only();
        assert_eq!(seen.target, forwarded, "{sent}");
        assert_eq!(seen.target.as_bytes(), forwarded.as_bytes(), "{sent}");
    }
}

#[test]
fn normalising_keeps_utf8_bytes() {
    assert_eq!(normalize_path("/p/%41Ûb").unwrap(), "/p/AÛb");
    assert_eq!(normalize_path("/%7e日本%2d").unwrap(), "/~日本-");
    assert!(normalize_path("/Û/%2e%2e").is_err());
}

/// Path-ish strings: the characters the normaliser treats specially, hex digits to form
/// escapes, and multi-byte UTF-8.
fn pathish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_string()),
        Just("%".to_string()),
        Just(".".to_string()),
        Just(";".to_string()),
        Just("\\".to_string()),
        Just("~".to_string()),
        Just("-".to_string()),
        "[0-9a-fA-F]{1,2}",
        "[g-zG-Z]{1,3}",
        "%[0-9a-fA-F]{2}",
        Just("Û".to_string()),
        Just("日本".to_string()),
        Just("é".to_string()),
        Just("\u{1F600}".to_string()),
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|pieces| format!("/{}", pieces.concat()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn normalising_twice_gives_the_same_path(path in pathish()) {
        if let Ok(once) = normalize_path(&path) {
            let twice = normalize_path(&once);
            prop_assert_eq!(twice.as_deref(), Ok(&*once), "from {:?}", path);
            // Only ASCII is ever decoded or rewritten: every non-ASCII byte survives.
            let kept = |s: &str| s.bytes().filter(|b| !b.is_ascii()).collect::<Vec<u8>>();
            prop_assert_eq!(kept(&once), kept(&path), "from {:?}", path);
        }
    }
}
