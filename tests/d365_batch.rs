//! Journal lines through OData `$batch` (one atomic changeset per voucher), and deletes of
//! unposted journals, against the D365 simulator over real loopback sockets.
#![cfg(feature = "sandbox")]

mod common;

use std::time::{Duration, Instant};

use common::{d365_client, d365_settings, dec, sim, today};
use ml_connector::d365::{BatchSettings, ChangesetOutcome, D365Client, D365Error, NewJournalLine};
use ml_connector::sandbox::d365::{
    D365Sim, SimService, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT,
};
use rust_decimal::Decimal;

fn client_with_timeout(sim: &D365Sim, timeout: Duration) -> D365Client {
    let mut s = d365_settings(sim);
    s.timeout = timeout;
    D365Client::new(s).unwrap()
}

fn client(sim: &D365Sim) -> D365Client {
    d365_client(sim)
}

fn line(batch: &str, account: &str, debit: &str, credit: &str, text: &str) -> NewJournalLine {
    NewJournalLine {
        legal_entity: "usmf".into(),
        batch_number: batch.into(),
        trans_date: today(),
        account_display: account.into(),
        offset_display: None,
        debit: dec(debit),
        credit: dec(credit),
        currency: "USD".into(),
        text: text.into(),
        voucher: None,
    }
}

/// A balanced voucher of `n` lines (n-1 debits to 618100-010, one credit to 200150).
fn voucher(batch: &str, tag: &str, n: usize, amount: &str) -> Vec<NewJournalLine> {
    let a = dec(amount);
    let mut v: Vec<NewJournalLine> = (1..n)
        .map(|i| {
            line(
                batch,
                "618100-010",
                &a.to_string(),
                "0",
                &format!("{tag} L{i}"),
            )
        })
        .collect();
    let total = a * Decimal::from(n as u64 - 1);
    v.push(line(
        batch,
        "200150",
        "0",
        &total.to_string(),
        &format!("{tag} L{n}"),
    ));
    v
}

fn settings(max_operations: usize) -> BatchSettings {
    BatchSettings {
        max_operations,
        ..Default::default()
    }
}

fn created(o: &ChangesetOutcome) -> &[ml_connector::d365::JournalLineRow] {
    match o {
        ChangesetOutcome::Created(rows) => rows,
        other => panic!("expected Created, got {other:?}"),
    }
}

fn single_line_posts(sim: &D365Sim) -> usize {
    sim.request_log()
        .iter()
        .filter(|r| r.service == SimService::FinOps && r.method == "POST")
        .filter(|r| r.path == "/data/LedgerJournalLines")
        .count()
}

#[tokio::test]
async fn three_vouchers_in_one_batch_are_created_exactly() {
    let sim = sim().await;
    let c = client(&sim);
    let h = c.create_header("usmf", "GenJrn", "batch").await.unwrap();
    let b = &h.batch_number;
    let sets = vec![
        voucher(b, "V1", 2, "1234.57"),
        voucher(b, "V2", 3, "0.10"),
        voucher(b, "V3", 5, "98765432109876.01"),
    ];
    let out = c
        .create_lines_batched(&sets, &BatchSettings::default())
        .await
        .unwrap();
    assert_eq!(out.len(), 3);
    let mut vouchers = vec![];
    for (o, sent) in out.iter().zip(&sets) {
        let rows = created(o);
        assert_eq!(rows.len(), sent.len());
        for (r, s) in rows.iter().zip(sent) {
            assert_eq!(r.debit, s.debit);
            assert_eq!(r.credit, s.credit);
            assert_eq!(r.text, s.text, "rows come back in the order sent");
            assert_eq!(r.batch_number, *b);
        }
        // One voucher per changeset.
        assert!(
            rows.iter().all(|r| r.voucher == rows[0].voucher),
            "{rows:?}"
        );
        vouchers.push(rows[0].voucher.clone());
    }
    vouchers.dedup();
    assert_eq!(vouchers.len(), 3, "{vouchers:?}");
    assert_eq!(created(&out[2])[0].debit.to_string(), "98765432109876.01");

    // One request, no single-line POSTs; the sim holds exactly these amounts.
    assert_eq!(sim.batch_request_count(), 1);
    assert_eq!(single_line_posts(&sim), 0);
    let stored = sim.lines();
    assert_eq!(stored.len(), 10);
    assert_eq!(stored[0].debit.to_string(), "1234.57");
    assert_eq!(stored[2].debit.to_string(), "0.10");
    let numbers: Vec<u32> = stored.iter().map(|l| l.line_number).collect();
    assert_eq!(numbers, (1..=10).collect::<Vec<_>>());

    // The wire format: multipart with CRLF, Content-IDs 1..10, absolute operation URLs.
    let req = sim
        .request_log()
        .into_iter()
        .find(|r| r.path == "/data/$batch")
        .unwrap();
    let ct = req
        .headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.clone())
        .unwrap();
    assert!(ct.starts_with("multipart/mixed; boundary=batch_"), "{ct}");
    assert_eq!(
        req.body
            .matches("Content-Type: multipart/mixed; boundary=changeset_")
            .count(),
        3
    );
    for id in 1..=10 {
        assert!(
            req.body.contains(&format!("\r\nContent-ID: {id}\r\n")),
            "{id}"
        );
    }
    assert_eq!(
        req.body
            .matches("Content-Transfer-Encoding: binary\r\n")
            .count(),
        10
    );
    assert_eq!(
        req.body
            .matches(&format!(
                "POST {}/data/LedgerJournalLines HTTP/1.1\r\n",
                sim.environment_url()
            ))
            .count(),
        10
    );
    assert!(req.body.contains("\"DebitAmount\":98765432109876.01"));
    assert!(!req.body.replace("\r\n", "").contains('\n'), "bare LF");
}

#[tokio::test]
async fn lines_are_chunked_by_max_operations_without_splitting_vouchers() {
    let sim = sim().await;
    let c = client(&sim);
    let h = c.create_header("usmf", "GenJrn", "450").await.unwrap();
    let sets: Vec<_> = (0..45)
        .map(|i| voucher(&h.batch_number, &format!("V{i}"), 10, "1.01"))
        .collect();
    let out = c.create_lines_batched(&sets, &settings(200)).await.unwrap();
    assert_eq!(out.len(), 45);
    assert!(out.iter().all(ChangesetOutcome::is_created), "{out:?}");
    assert_eq!(sim.batch_request_count(), 3);
    let stored = sim.lines();
    assert_eq!(stored.len(), 450);
    // Every $batch stayed within the limit and every voucher is whole and separate.
    for r in sim
        .request_log()
        .iter()
        .filter(|r| r.path == "/data/$batch")
    {
        assert!(r.body.matches("Content-ID: ").count() <= 200);
    }
    let mut vouchers: Vec<&str> = stored.iter().map(|l| l.voucher.as_str()).collect();
    vouchers.dedup();
    assert_eq!(vouchers.len(), 45);
    let back = c.lines("usmf", &h.batch_number).await.unwrap();
    assert_eq!(back.len(), 450);
}

#[tokio::test]
async fn failed_changeset_is_atomic_and_stops_the_batch() {
    let sim = sim().await;
    let c = client(&sim);
    let h = c.create_header("usmf", "GenJrn", "fail").await.unwrap();
    let b = &h.batch_number;
    // Voucher 2's bad account is on its LAST line: its first lines pass validation and must be
    // rolled back with it.
    let mut v2 = voucher(b, "V2", 3, "5.00");
    v2[2].account_display = "999998".into();
    let sets = vec![voucher(b, "V1", 2, "7.25"), v2, voucher(b, "V3", 2, "9.00")];
    let out = c.create_lines_batched(&sets, &settings(200)).await.unwrap();
    assert_eq!(created(&out[0]).len(), 2);
    match &out[1] {
        ChangesetOutcome::Failed { status, messages } => {
            assert_eq!(*status, 400);
            assert!(
                messages[0].contains("'999998'") && messages[0].contains("Main account"),
                "{messages:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(out[2], ChangesetOutcome::NotProcessed { .. }),
        "{:?}",
        out[2]
    );
    assert_eq!(sim.batch_request_count(), 1);
    // Exactly voucher 1's lines, totals and voucher sequence untouched by voucher 2.
    let stored = sim.lines();
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert!(stored.iter().all(|l| l.text.starts_with("V1 ")));
    assert_eq!(sim.headers()[0].total_debit, dec("7.25"));
    let again = c
        .create_lines_batched(&sets[2..], &settings(200))
        .await
        .unwrap();
    let v1 = &created(&out[0])[0].voucher;
    let v3 = &created(&again[0])[0].voucher;
    assert_eq!(v1, "GNJL000001");
    assert_eq!(
        v3, "GNJL000002",
        "the failed changeset's voucher number was rolled back"
    );
}

#[tokio::test]
async fn later_batches_of_the_journal_are_not_sent_after_a_failure() {
    let sim = sim().await;
    let c = client(&sim);
    let h = c.create_header("usmf", "GenJrn", "stop").await.unwrap();
    let b = &h.batch_number;
    let mut bad = voucher(b, "BAD", 2, "1");
    bad[0].account_display = "999998".into();
    let sets = vec![
        voucher(b, "A", 2, "1"),
        bad,
        voucher(b, "C", 2, "1"),
        voucher(b, "D", 2, "1"),
    ];
    // Two vouchers per request: request 1 fails at its 2nd changeset, request 2 is never sent.
    let out = c.create_lines_batched(&sets, &settings(4)).await.unwrap();
    assert!(out[0].is_created());
    assert!(matches!(out[1], ChangesetOutcome::Failed { .. }));
    for o in &out[2..] {
        match o {
            ChangesetOutcome::NotProcessed { reason } => {
                assert!(reason.contains("not sent"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(sim.batch_request_count(), 1);
    assert_eq!(sim.lines().len(), 2);
}

#[tokio::test]
async fn reject_changeset_containing_knob() {
    let sim = sim().await;
    let c = client(&sim);
    let h = c.create_header("usmf", "GenJrn", "knob").await.unwrap();
    sim.reject_changeset_containing("POISON");
    let mut v = voucher(&h.batch_number, "V1", 2, "3");
    v[1].text = "POISON pill".into();
    let out = c.create_lines_batched(&[v], &settings(200)).await.unwrap();
    match &out[0] {
        ChangesetOutcome::Failed { status, messages } => {
            assert_eq!(*status, 400);
            assert!(messages[0].contains("'POISON'"), "{messages:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(sim.lines().is_empty());
    sim.clear_changeset_rejections();
    let v = voucher(&h.batch_number, "V1", 2, "3");
    assert!(c.create_lines_batched(&[v], &settings(200)).await.unwrap()[0].is_created());
}

#[tokio::test]
async fn throttled_batch_is_resent_after_retry_after_and_created_once() {
    let sim = sim().await;
    let c = client(&sim);
    let h = c.create_header("usmf", "GenJrn", "429").await.unwrap();
    sim.throttle_next(1, Some(1));
    let t = Instant::now();
    let out = c
        .create_lines_batched(&[voucher(&h.batch_number, "V", 3, "2.50")], &settings(200))
        .await
        .unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(created(&out[0]).len(), 3);
    let statuses: Vec<u16> = sim
        .request_log()
        .iter()
        .filter(|r| r.path == "/data/$batch")
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [429, 200]);
    assert_eq!(sim.lines().len(), 3, "created once");
}

#[tokio::test]
async fn throttling_exhausted_is_not_processed() {
    let sim = sim().await;
    let c = client(&sim);
    let h = c.create_header("usmf", "GenJrn", "429x").await.unwrap();
    sim.throttle_next(10, Some(0));
    let out = c
        .create_lines_batched(&[voucher(&h.batch_number, "V", 2, "1")], &settings(200))
        .await
        .unwrap();
    match &out[0] {
        ChangesetOutcome::NotProcessed { reason } => assert!(reason.contains("429"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.batch_request_count(), 3, "max_attempts");
    assert!(sim.lines().is_empty());
}

#[tokio::test]
async fn commit_then_error_is_unknown_and_the_lines_exist() {
    let sim = sim().await;
    let c = client(&sim);
    let h = c.create_header("usmf", "GenJrn", "c-t-d").await.unwrap();
    let b = &h.batch_number;
    sim.fail_next_batches(1, 500, true);
    let sets = vec![voucher(b, "V1", 2, "1"), voucher(b, "V2", 3, "2")];
    let out = c.create_lines_batched(&sets, &settings(200)).await.unwrap();
    for o in &out {
        match o {
            ChangesetOutcome::Unknown { detail } => assert!(detail.contains("500"), "{detail}"),
            other => panic!("{other:?}"),
        }
    }
    // Not resent — and D365 does hold the lines: the caller must reconcile by reading.
    assert_eq!(sim.batch_request_count(), 1);
    assert_eq!(sim.lines().len(), 5);
    assert_eq!(c.lines("usmf", b).await.unwrap().len(), 5);
}

#[tokio::test]
async fn dropped_connection_is_unknown_with_or_without_commit() {
    let sim = sim().await;
    let c = client(&sim);
    let h = c.create_header("usmf", "GenJrn", "drop").await.unwrap();
    let b = &h.batch_number;
    // Commit, then the connection drops instead of answering.
    sim.fail_next_batches(1, 0, true);
    let out = c
        .create_lines_batched(&[voucher(b, "V1", 2, "1")], &settings(200))
        .await
        .unwrap();
    assert!(
        matches!(out[0], ChangesetOutcome::Unknown { .. }),
        "{out:?}"
    );
    assert_eq!(sim.lines().len(), 2);
    // A gateway error before processing is just as unknown to the client.
    sim.fail_next_batches(1, 502, false);
    let out = c
        .create_lines_batched(&[voucher(b, "V2", 2, "1")], &settings(200))
        .await
        .unwrap();
    assert!(
        matches!(out[0], ChangesetOutcome::Unknown { .. }),
        "{out:?}"
    );
    assert_eq!(sim.lines().len(), 2);
    assert_eq!(sim.batch_request_count(), 2);
}

#[tokio::test]
async fn timeout_is_unknown_and_not_resent() {
    let sim = sim().await;
    let c = client_with_timeout(&sim, Duration::from_millis(700));
    let h = c.create_header("usmf", "GenJrn", "slow").await.unwrap();
    sim.set_latency(Duration::from_millis(1500));
    let out = c
        .create_lines_batched(&[voucher(&h.batch_number, "V1", 2, "1")], &settings(200))
        .await
        .unwrap();
    assert!(
        matches!(out[0], ChangesetOutcome::Unknown { .. }),
        "{out:?}"
    );
    sim.set_latency(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let batches = sim
        .request_log()
        .iter()
        .filter(|r| r.path == "/data/$batch")
        .count();
    assert!(batches <= 1, "never resent");
}

#[tokio::test]
async fn voucher_larger_than_the_limit_is_refused_before_any_request() {
    let sim = sim().await;
    let c = client(&sim);
    let sets = vec![
        voucher("00042", "OK", 2, "1"),
        voucher("00042", "BIG", 6, "1"),
    ];
    let e = c
        .create_lines_batched(&sets, &settings(5))
        .await
        .unwrap_err();
    assert!(matches!(e, D365Error::InvalidInput(_)), "{e:?}");
    assert!(e.to_string().contains("never split"), "{e}");
    assert!(sim.request_log().is_empty(), "no token, no request");
    // Mixed journals in one voucher are refused too.
    let mut mixed = voucher("00042", "M", 2, "1");
    mixed[1].batch_number = "00043".into();
    assert!(c
        .create_lines_batched(&[mixed], &settings(5))
        .await
        .is_err());
    assert!(sim.request_log().is_empty());
}

#[tokio::test]
async fn server_side_operation_limit_fails_the_whole_request() {
    let sim = sim().await;
    let c = client(&sim);
    let h = c.create_header("usmf", "GenJrn", "limit").await.unwrap();
    sim.set_batch_max_operations(4);
    let sets = vec![
        voucher(&h.batch_number, "V1", 3, "1"),
        voucher(&h.batch_number, "V2", 3, "1"),
    ];
    let out = c.create_lines_batched(&sets, &settings(10)).await.unwrap();
    for o in &out {
        match o {
            ChangesetOutcome::Refused { status, messages } => {
                assert_eq!(*status, 400);
                assert!(messages[0].contains("limit is 4"), "{messages:?}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(sim.lines().is_empty());
    // Within the limit it works.
    let out = c.create_lines_batched(&sets, &settings(4)).await.unwrap();
    assert!(out.iter().all(ChangesetOutcome::is_created));
    assert_eq!(sim.batch_request_count(), 3);
}

#[tokio::test]
async fn journals_run_in_parallel_up_to_max_in_flight() {
    let sim = sim().await;
    let c = client(&sim);
    let h1 = c.create_header("usmf", "GenJrn", "p1").await.unwrap();
    let h2 = c.create_header("usmf", "GenJrn", "p2").await.unwrap();
    let sets = vec![
        voucher(&h1.batch_number, "A", 2, "1"),
        voucher(&h2.batch_number, "B", 2, "1"),
        voucher(&h1.batch_number, "C", 2, "1"),
        voucher(&h2.batch_number, "D", 2, "1"),
    ];
    sim.set_latency(Duration::from_millis(500));
    let t = Instant::now();
    let seq = BatchSettings {
        max_operations: 2,
        max_in_flight: 1,
    };
    let out = c.create_lines_batched(&sets, &seq).await.unwrap();
    assert!(out.iter().all(ChangesetOutcome::is_created));
    assert!(
        t.elapsed() >= Duration::from_millis(2000),
        "{:?}",
        t.elapsed()
    );
    let t = Instant::now();
    let par = BatchSettings {
        max_operations: 2,
        max_in_flight: 2,
    };
    let out = c.create_lines_batched(&sets, &par).await.unwrap();
    let elapsed = t.elapsed();
    assert!(out.iter().all(ChangesetOutcome::is_created));
    // Two journals × two sequential requests each, in parallel: ~1 s, not ~2 s.
    assert!(elapsed < Duration::from_millis(1800), "{elapsed:?}");
    assert!(elapsed >= Duration::from_millis(1000), "{elapsed:?}");
    // Outcomes are in input order and each landed in its own journal.
    assert_eq!(created(&out[1])[0].batch_number, h2.batch_number);
    assert_eq!(created(&out[2])[0].batch_number, h1.batch_number);
    assert_eq!(sim.lines().len(), 16);
}

#[tokio::test]
async fn delete_line_and_header_of_unposted_journal() {
    let sim = sim().await;
    let c = client(&sim);
    let h = c.create_header("usmf", "GenJrn", "del").await.unwrap();
    let b = &h.batch_number;
    let out = c
        .create_lines_batched(&[voucher(b, "V", 3, "4.00")], &settings(200))
        .await
        .unwrap();
    let rows = created(&out[0]);
    assert!(c
        .delete_line("USMF", b, &rows[1].line_number)
        .await
        .unwrap());
    let left: Vec<u32> = sim.lines().iter().map(|l| l.line_number).collect();
    assert_eq!(left, [1, 3]);
    assert_eq!(sim.headers()[0].total_debit, dec("4.00"));
    assert!(
        !c.delete_line("usmf", b, "2").await.unwrap(),
        "already gone"
    );
    let del = sim
        .request_log()
        .into_iter()
        .find(|r| r.method == "DELETE")
        .unwrap();
    assert_eq!(
        fno_decoded_path(&del.path),
        format!(
            "/data/LedgerJournalLines(dataAreaId='usmf',JournalBatchNumber='{b}',LineNumber=2)"
        )
    );
    assert_eq!(del.status, 204);

    assert!(c.delete_header("usmf", b).await.unwrap());
    assert!(sim.headers().is_empty());
    assert!(sim.lines().is_empty(), "lines go with the header");
    assert!(c.header("usmf", b).await.unwrap().is_none());
    assert!(!c.delete_header("usmf", b).await.unwrap());
}

fn fno_decoded_path(p: &str) -> String {
    p.replace("%27", "'")
}

#[tokio::test]
async fn delete_on_posted_journal_is_rejected() {
    let sim = sim().await;
    let c = client(&sim);
    let h = c.create_header("usmf", "GenJrn", "posted").await.unwrap();
    let b = &h.batch_number;
    c.create_lines_batched(&[voucher(b, "V", 2, "1")], &settings(200))
        .await
        .unwrap();
    sim.post_journal("usmf", b);
    for e in [
        c.delete_line("usmf", b, "1").await.unwrap_err(),
        c.delete_header("usmf", b).await.unwrap_err(),
    ] {
        match &e {
            D365Error::Rejected {
                status, messages, ..
            } => {
                assert_eq!(*status, 400);
                assert!(messages[0].contains("posted"), "{messages:?}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(sim.lines().len(), 2);
    assert_eq!(sim.headers().len(), 1);
}

#[tokio::test]
async fn delete_with_unknown_outcome_is_not_resent() {
    let sim = sim().await;
    let c = client(&sim);
    let h = c.create_header("usmf", "GenJrn", "del5xx").await.unwrap();
    sim.fail_next_writes(1, 502, true);
    let e = c.delete_header("usmf", &h.batch_number).await.unwrap_err();
    assert!(matches!(e, D365Error::OutcomeUnknown { .. }), "{e:?}");
    assert!(sim.headers().is_empty(), "it was applied");
    let deletes = sim
        .request_log()
        .iter()
        .filter(|r| r.method == "DELETE")
        .count();
    assert_eq!(deletes, 1);
    assert!(
        c.delete_header("usmf", "a/b").await.is_err(),
        "no slash in keys"
    );
}

/// The simulator is strict about framing, so a client bug shows up as a 400, not a lenient pass.
#[tokio::test]
async fn simulator_rejects_malformed_batches_and_accepts_relative_urls() {
    let sim = sim().await;
    let c = client(&sim);
    let h = c.create_header("usmf", "GenJrn", "raw").await.unwrap();
    let http = reqwest::Client::new();
    let env = sim.environment_url();
    let token: serde_json::Value = http
        .post(format!(
            "{}/{SANDBOX_TENANT}/oauth2/v2.0/token",
            sim.authority_url()
        ))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", SANDBOX_CLIENT_ID),
            ("client_secret", SANDBOX_CLIENT_SECRET),
            ("scope", &format!("{env}/.default")),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap().to_string();
    let body = |target: &str, content_id: bool| {
        let json = format!(
            r#"{{"dataAreaId":"usmf","JournalBatchNumber":"{}","TransDate":"{}T12:00:00Z","AccountDisplayValue":"618100","DebitAmount":1,"CreditAmount":0,"CurrencyCode":"USD","Text":"raw"}}"#,
            h.batch_number,
            today()
        );
        let id = if content_id { "Content-ID: 1\r\n" } else { "" };
        format!(
            "--batch_x\r\nContent-Type: multipart/mixed; boundary=changeset_y\r\n\r\n\
--changeset_y\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n{id}\r\n\
POST {target} HTTP/1.1\r\nContent-Type: application/json\r\n\r\n{json}\r\n\
--changeset_y--\r\n--batch_x--\r\n"
        )
    };
    let send = |b: String| {
        http.post(format!("{env}/data/$batch"))
            .bearer_auth(&token)
            .header("Content-Type", "multipart/mixed; boundary=batch_x")
            .body(b)
            .send()
    };
    // LF-only line endings.
    let r = send(body("LedgerJournalLines", true).replace("\r\n", "\n"))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // No Content-ID on an operation in a changeset.
    let r = send(body("LedgerJournalLines", false)).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("Content-ID"));
    assert!(sim.lines().is_empty());
    // Relative, absolute-path and absolute URLs are all accepted.
    for target in [
        "LedgerJournalLines".to_string(),
        "/data/LedgerJournalLines".to_string(),
        format!("{env}/data/LedgerJournalLines"),
    ] {
        let r = send(body(&target, true)).await.unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        assert!(text.contains("HTTP/1.1 201 Created\r\n"), "{text}");
        assert!(text.contains("Content-ID: 1\r\n"), "{text}");
    }
    assert_eq!(sim.lines().len(), 3);
}
