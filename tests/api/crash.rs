//! Crash durability: concurrent writers drive creates, If-Match updates and transactions at a
//! real `liaison` process, which is killed with SIGKILL at a random moment, several rounds over
//! one database. After each restart every write that got a 2xx answer is there with its
//! version, no write that was refused is visible, every transaction is all or nothing, and the
//! audit chain verifies. Writes whose answer the kill cut off may have landed or not, but never
//! in part.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{fixtures, ServerProcess, TestApp};

const ROUNDS: usize = 6;
pub const WRITERS: usize = 8;
/// Goals every round's updaters share, so that If-Match writers race on them.
const SHARED_GOALS: usize = 4;
const MARK: &str = "urn:liaison:crash-test";

/// How the server answered a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 2xx: the write must survive.
    Acknowledged,
    /// 4xx: the write must never be visible.
    Refused,
    /// No answer (the kill cut the connection) or a 5xx: it may have landed, wholly or not at all.
    Unknown,
}

impl Answer {
    fn of(result: &Result<(u16, Value), String>) -> Self {
        match result {
            Ok((status, _)) if (200..300).contains(status) => Self::Acknowledged,
            Ok((status, _)) if (400..500).contains(status) => Self::Refused,
            _ => Self::Unknown,
        }
    }
}

/// One write and what became of it.
#[derive(Debug)]
pub enum Write {
    /// A Patient created with identifier `mark`; `id` when acknowledged.
    Create { mark: String, answer: Answer, id: Option<String> },
    /// A shared Goal updated with If-Match to carry `mark` in `description.text`.
    Update { goal: String, mark: String, answer: Answer, version: Option<String> },
    /// A transaction creating a Patient and a Goal, both with identifier `mark`.
    Transaction { mark: String, answer: Answer },
}

/// A small deterministic generator, seeded per test run (the seed is printed on failure).
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

fn marked(resource: &str, mark: &str) -> Value {
    let mut r = match resource {
        "Patient" => fixtures::patient(),
        _ => json!({"resourceType": resource, "lifecycleStatus": "active",
            "description": {"text": "reduce panic attacks"}, "subject": {"reference": "urn:uuid:patient"}}),
    };
    r["identifier"] = json!([{"system": MARK, "value": mark}]);
    r
}

fn transaction(mark: &str, broken: bool) -> Value {
    let mut goal = marked("Goal", mark);
    if broken {
        // A Goal without its required lifecycleStatus fails the whole transaction.
        goal.as_object_mut().unwrap().remove("lifecycleStatus");
    }
    json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:patient", "resource": marked("Patient", mark), "request": {"method": "POST", "url": "Patient"}},
        {"resource": goal, "request": {"method": "POST", "url": "Goal"}},
    ]})
}

/// The writers of one round, and what they wrote.
pub struct Writers {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Write>>>,
}

impl Writers {
    /// Starts `WRITERS` writers on `server`, racing on `goals`; `round` keeps marks unique.
    pub fn start(server: &Arc<ServerProcess>, goals: &Arc<Vec<String>>, round: usize) -> Self {
        let (stop, log) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let tasks = (0..WRITERS)
            .map(|n| tokio::spawn(writer(server.clone(), goals.clone(), round, n, stop.clone(), log.clone())))
            .collect();
        Self { tasks, stop, log }
    }

    /// Waits until the writers have logged at least `n` writes (the server is up and busy).
    pub async fn wait_for(&self, n: usize) {
        for _ in 0..600 {
            if self.log.lock().unwrap().len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the writers logged fewer than {n} writes in 30 s");
    }

    /// Tells the writers to stop (they stop by themselves once the server is gone), waits for
    /// them, and returns what they wrote.
    pub async fn finish(self) -> Vec<Write> {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.unwrap();
        }
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

/// One writer: a mix of the three kinds of write, some of them invalid on purpose, until told
/// to stop or the server stops answering at all.
async fn writer(
    server: Arc<ServerProcess>,
    goals: Arc<Vec<String>>,
    round: usize,
    n: usize,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Write>>>,
) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((round * WRITERS + n) as u64 + 1));
    for i in 0.. {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let mark = format!("r{round}-w{n}-{i}");
        let broken = rng.next(5) == 0;
        // The write, and whether the server is gone (no answer at all).
        let (write, gone) = match rng.next(3) {
            0 => {
                let mut patient = marked("Patient", &mark);
                if broken {
                    patient["birthDate"] = json!("not a date");
                }
                let result = server.request("POST", "/fhir/Patient", Some(patient)).await;
                let id = result.as_ref().ok().and_then(|(_, p)| p["id"].as_str().map(str::to_owned));
                (Write::Create { mark, answer: Answer::of(&result), id }, result.is_err())
            }
            1 => {
                let goal = &goals[rng.next(goals.len() as u64) as usize];
                let mut current = match server.request("GET", &format!("/fhir/Goal/{goal}"), None).await {
                    Ok((200, current)) => current,
                    Ok(_) => {
                        // The database is away: try again shortly.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    Err(_) => break,
                };
                // A stale version now and then must be refused with 412.
                let version = current["meta"]["versionId"].as_str().unwrap_or("1").to_owned();
                let if_match = if broken { "W/\"0\"".to_owned() } else { format!("W/\"{version}\"") };
                current["description"]["text"] = json!(mark);
                let result =
                    server.send("PUT", &format!("/fhir/Goal/{goal}"), &[("if-match", &if_match)], Some(current)).await;
                let result = result.map(|(status, _, body)| (status, body));
                let version =
                    result.as_ref().ok().and_then(|(_, g)| g["meta"]["versionId"].as_str().map(str::to_owned));
                (Write::Update { goal: goal.clone(), mark, answer: Answer::of(&result), version }, result.is_err())
            }
            _ => {
                let result = server.request("POST", "/fhir", Some(transaction(&mark, broken))).await;
                (Write::Transaction { mark, answer: Answer::of(&result) }, result.is_err())
            }
        };
        let unavailable = matches!(
            &write,
            Write::Create { answer: Answer::Unknown, .. }
                | Write::Update { answer: Answer::Unknown, .. }
                | Write::Transaction { answer: Answer::Unknown, .. }
        );
        log.lock().unwrap().push(write);
        if gone {
            break;
        }
        if unavailable {
            // A 5xx (the database is away): back off a little, as a client would.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// How many resources of `resource` carry identifier `mark`, and their ids.
async fn with_mark(server: &ServerProcess, resource: &str, mark: &str) -> Vec<String> {
    let (status, bundle) =
        server.request("GET", &format!("/fhir/{resource}?identifier={MARK}%7C{mark}"), None).await.unwrap();
    assert_eq!(status, 200, "{bundle}");
    bundle["entry"].as_array().into_iter().flatten().map(|e| e["resource"]["id"].as_str().unwrap().to_owned()).collect()
}

/// Every description a Goal has had, by version.
async fn goal_history(server: &ServerProcess, goal: &str) -> BTreeMap<u64, String> {
    let (status, bundle) =
        server.request("GET", &format!("/fhir/Goal/{goal}/_history?_count=1000"), None).await.unwrap();
    assert_eq!(status, 200, "{bundle}");
    let more = bundle["link"].as_array().into_iter().flatten().any(|l| l["relation"] == "next");
    assert!(!more, "Goal/{goal} has more versions than one history page holds");
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let version = e["resource"]["meta"]["versionId"].as_str().unwrap().parse().unwrap();
            (version, e["resource"]["description"]["text"].as_str().unwrap_or_default().to_owned())
        })
        .collect()
}

/// Counts by kind of answer, for the summary line.
#[derive(Default, Debug)]
pub struct Tally {
    pub acknowledged: usize,
    pub found: usize,
    pub refused: usize,
    pub unknown: usize,
    pub unknown_landed: usize,
}

/// Checks every write of the log against the restarted server.
pub async fn check(server: &ServerProcess, log: &[Write], goals: &[String], tally: &mut Tally) {
    let mut histories = BTreeMap::new();
    for goal in goals {
        let history = goal_history(server, goal).await;
        let newest = *history.keys().max().unwrap();
        assert_eq!(history.len() as u64, newest, "Goal/{goal} has every version from 1 to {newest}, no gaps");
        histories.insert(goal.clone(), history);
    }
    for write in log {
        let (answer, landed) = match write {
            Write::Create { mark, answer, id } => {
                let found = with_mark(server, "Patient", mark).await;
                assert!(found.len() <= 1, "create {mark} landed once at most: {found:?}");
                if *answer == Answer::Acknowledged {
                    assert_eq!(found.first(), id.as_ref(), "acknowledged create {mark} is there under its id");
                }
                (*answer, !found.is_empty())
            }
            Write::Update { goal, mark, answer, version } => {
                let history = &histories[goal];
                let versions: Vec<u64> = history.iter().filter(|(_, m)| *m == mark).map(|(v, _)| *v).collect();
                assert!(versions.len() <= 1, "update {mark} landed once at most: {versions:?}");
                if *answer == Answer::Acknowledged {
                    let version: u64 = version.as_deref().unwrap().parse().unwrap();
                    assert_eq!(versions, [version], "acknowledged update {mark} is Goal/{goal} version {version}");
                }
                (*answer, !versions.is_empty())
            }
            Write::Transaction { mark, answer } => {
                let patients = with_mark(server, "Patient", mark).await;
                let goals = with_mark(server, "Goal", mark).await;
                assert_eq!(patients.len(), goals.len(), "transaction {mark} is all or nothing");
                assert!(patients.len() <= 1, "transaction {mark} landed once at most");
                (*answer, !patients.is_empty())
            }
        };
        match answer {
            Answer::Acknowledged => {
                assert!(landed, "an acknowledged write is never lost: {write:?}");
                tally.acknowledged += 1;
                tally.found += 1;
            }
            Answer::Refused => {
                assert!(!landed, "a refused write is never visible: {write:?}");
                tally.refused += 1;
            }
            Answer::Unknown => {
                tally.unknown += 1;
                tally.unknown_landed += usize::from(landed);
            }
        }
    }
}

/// The Goals the updaters of every round race on.
pub async fn shared_goals(app: &TestApp) -> Arc<Vec<String>> {
    let patient = app.create(fixtures::patient()).await["id"].as_str().unwrap().to_owned();
    let mut goals = Vec::new();
    for _ in 0..SHARED_GOALS {
        let mut goal = marked("Goal", "shared");
        goal["subject"]["reference"] = json!(format!("Patient/{patient}"));
        goals.push(app.create(goal).await["id"].as_str().unwrap().to_owned());
    }
    Arc::new(goals)
}

pub async fn acknowledged_writes_survive_sigkill(app: TestApp) {
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let mut rng = Rng(seed);
    let goals = shared_goals(&app).await;
    let mut tally = Tally::default();
    let mut server = Arc::new(ServerProcess::start(&app, &[]).await);
    for round in 0..ROUNDS {
        let writers = Writers::start(&server, &goals, round);
        writers.wait_for(2 * WRITERS).await;
        tokio::time::sleep(Duration::from_millis(rng.next(900))).await;
        let pid = server.child.id();
        let killed = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
        assert!(killed.success(), "SIGKILL sent");
        let log = writers.finish().await;
        drop(server);
        server = Arc::new(ServerProcess::start(&app, &[]).await);
        check(&server, &log, &goals, &mut tally).await;
        let report = liaison::verify_audit(&liaison::Config::for_database(&app.database_url)).await.unwrap();
        assert_eq!(report.broken, None, "the audit chain verifies after round {round} (seed {seed})");
    }
    println!(
        "crash durability ({}): {ROUNDS} SIGKILL rounds, {} writes acknowledged and {} found after restart, \
         {} refused and none visible, {} cut off by the kill ({} of them landed whole)",
        app.backend.name(),
        tally.acknowledged,
        tally.found,
        tally.refused,
        tally.unknown,
        tally.unknown_landed
    );
}
