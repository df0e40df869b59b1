//! Inputs on which a property of the `tenant_file` fuzz target (fuzz/src/tenant.rs)
//! failed, kept as tests with the exact input.
use kefu_tenant::Tenant;

/// The failing input: a tenant file with `lines` between its name and its one intent.
fn tenant_file(lines: &str) -> String {
    format!(
        r#"id = "acme"
name = "Acme"
{lines}
[[intents]]
name = "greeting"
route = "answer"
urgency = "low"
examples = ["hi"]
"#
    )
}

/// The key's actor is recorded in every audit entry and on every reply made with it:
/// a blank one leaves no trace of who acted.
#[test]
fn a_key_with_a_blank_agent_is_refused() {
    let source = tenant_file(
        r#"[[api_keys]]
id = "desk"
role = "agent"
sha256 = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
agent = " ""#,
    );
    match Tenant::parse(&source) {
        Err(_) => {}
        Ok(tenant) => panic!(
            "accepted: key {} acts as {:?}",
            tenant.api_keys[0].id,
            tenant.api_keys[0].actor()
        ),
    }
}

/// The gateway waits 1 / requests_per_second between requests: a vanishing rate is a
/// typo that would lock the tenant out for longer than the universe's age.
#[test]
fn a_vanishing_rate_limit_is_refused() {
    let source = tenant_file("rate_limit = { requests_per_second = 1e-300, burst = 1 }");
    let error = Tenant::parse(&source).expect_err("accepted a rate of 1e-300 per second");
    assert!(
        format!("{error:#}").contains("requests_per_second"),
        "{error:#}"
    );
}
