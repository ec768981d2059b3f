//! The process's life: on SIGTERM readiness fails first while requests are still served, then
//! the listener closes, a request in flight still completes, and the process exits cleanly.

use serde_json::{json, Value};

use crate::helpers::{ServerProcess, TestApp};

fn terminate(process: &ServerProcess) {
    let status = std::process::Command::new("kill").args(["-TERM", &process.child.id().to_string()]).status();
    assert!(status.is_ok_and(|s| s.success()), "SIGTERM sent");
}

/// Waits for the process to exit (at most `seconds`); its exit status.
async fn exit_status(process: &mut ServerProcess, seconds: u64) -> std::process::ExitStatus {
    for _ in 0..seconds * 20 {
        if let Some(status) = process.child.try_wait().unwrap() {
            return status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the process did not exit within {seconds} s");
}

pub async fn sigterm_drains_then_stops(app: TestApp) {
    // Readiness goes false first; requests are still answered during the delay.
    let mut process = ServerProcess::start(&app, &["--shutdown-delay-seconds", "2"]).await;
    terminate(&process);
    let mut not_ready = false;
    for _ in 0..20 {
        let (status, body) = process.request("GET", "/health/ready", None).await.unwrap();
        if status == 503 {
            assert_eq!(body["reason"], "shutting down");
            not_ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(not_ready, "readiness fails once SIGTERM arrives");
    let (status, _) = process.request("GET", "/fhir/metadata", None).await.unwrap();
    assert_eq!(status, 200, "still serving during the delay");
    assert!(exit_status(&mut process, 10).await.success());
    assert!(process.request("GET", "/health/live", None).await.is_err(), "the listener is closed");

    // A request in flight when the listener closes completes.
    let process = ServerProcess::start(&app, &["--shutdown-delay-seconds", "0"]).await;
    let entries: Vec<Value> = (0..400)
        .map(|i| {
            json!({"request": {"method": "POST", "url": "Patient"},
                "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:drain", "value": i.to_string()}]}})
        })
        .collect();
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let pid = process.child.id();
    let process = std::sync::Arc::new(process);
    let in_flight = {
        let process = process.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let answer = process.request("POST", "/fhir", Some(bundle)).await;
            (answer, started.elapsed())
        })
    };
    // Give the request time to arrive, then terminate while it runs.
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let (answer, took) = in_flight.await.unwrap();
    let (status, body) = answer.expect("the request in flight is answered");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["entry"].as_array().unwrap().len(), 400);
    assert!(took.as_millis() > 150, "the request was in flight when SIGTERM arrived ({took:?})");
    let mut process = std::sync::Arc::into_inner(process).expect("the request is done with it");
    assert!(exit_status(&mut process, 10).await.success());
    let found = app.get("Patient?identifier=urn:drain|&_total=accurate&_count=0").await;
    assert_eq!(found.json["total"], 400, "the transaction committed whole");
}
