// The coordinator's HTTP service (docs/http.md): the JSON API answers what the CLI and the database say, metrics page
// through every row once, errors have statuses and messages, Prometheus counts what happened (checked against the
// database), labels stay bounded; with keys a bearer token is required; a standby says so.

import Foundation
import LibPQ
import TesseraTesting
import Testing

@Suite(.serialized, .enabled(if: IntegrationEnv.ready, "needs TESSERA_TEST_DATABASE_URL and a built tessera (run ops/test)"))
struct HTTPServiceTests {
    static let shards = 6

    static let spec = """
        name: http-noop
        kind: sampling
        algorithm: noop
        seed: 3
        shards: \(shards)
        params:
          metrics: 9
          result_bytes: 2048
        """

    func value(_ samples: [(name: String, labels: [String: String], value: Double)], _ name: String, _ labels: [String: String] = [:]) throws -> Double {
        guard let s = samples.first(where: { $0.name == name && $0.labels == labels }) else {
            throw TestFailure("no sample \(name)\(labels) in /metrics")
        }
        return s.value
    }

    @Test func jsonAPIAndPrometheusAgreeWithTheDatabase() throws {
        let cluster = try Cluster(workers: 2, http: true)
        defer { cluster.shutdown() }
        let base = cluster.httpURL
        #expect(base.hasPrefix("http://127.0.0.1:"))
        let id = try cluster.submit(text: Self.spec)
        let w = try cluster.cli(["wait", "\(id)", "--timeout", "120"])
        #expect(w.status == 0, "wait: \(w.stderr)")

        let health = try httpGet("\(base)/healthz")
        #expect(health.status == 200)
        #expect(try health.json()["role"] as? String == "active")

        // Jobs list, with a filter, and bad filters answered 400 with the reason.
        let list = try httpGet("\(base)/api/v1/jobs?state=succeeded&limit=10")
        #expect(list.status == 200 && list.headers["content-type"] == "application/json")
        let jobs = try list.json()["jobs"] as? [[String: Any]] ?? []
        #expect(jobs.map { $0["id"] as? Int } == [id])
        let bogus = try httpGet("\(base)/api/v1/jobs?state=bogus")
        let bogusError = try bogus.json()["error"] as? String
        #expect(bogus.status == 400)
        #expect(bogusError?.contains("unknown job state 'bogus'") == true)
        #expect(try httpGet("\(base)/api/v1/jobs?limit=0").status == 400)
        #expect(try httpGet("\(base)/api/v1/jobs?limit=x").status == 400)
        let failedJobs = try httpGet("\(base)/api/v1/jobs?state=failed").json()["jobs"] as? [Any]
        #expect(failedJobs?.isEmpty == true)

        // One job: the same as `tessera status ID --json`.
        let job = try httpGet("\(base)/api/v1/jobs/\(id)").json()["job"] as? [String: Any] ?? [:]
        let cliJob = try cluster.json(["status", "\(id)"]) as? [String: Any] ?? [:]  // the job object itself
        #expect(job["state"] as? String == "succeeded")
        #expect(job["state"] as? String == cliJob["state"] as? String)
        #expect(job["name"] as? String == "http-noop" && cliJob["name"] as? String == "http-noop")

        let shards = try httpGet("\(base)/api/v1/jobs/\(id)/shards").json()["shards"] as? [[String: Any]] ?? []
        #expect(shards.count == Self.shards)
        #expect(shards.allSatisfy { $0["state"] as? String == "succeeded" })
        #expect(Set(shards.compactMap { $0["worker"] as? String }).isSubset(of: ["w1", "w2"]))

        let events = try httpGet("\(base)/api/v1/jobs/\(id)/events").json()["events"] as? [[String: Any]] ?? []
        let kinds = events.compactMap { $0["kind"] as? String }
        #expect(kinds.first == "job.submitted" && kinds.contains("job.succeeded"))
        #expect(kinds.filter { $0 == "shard.succeeded" }.count == Self.shards)

        // The result: what `tessera result --json` prints.
        let result = try httpGet("\(base)/api/v1/jobs/\(id)/result").json()
        let cliResult = try cluster.json(["result", "\(id)"]) as? [String: Any] ?? [:]  // the result object itself
        #expect(result["state"] as? String == "succeeded")
        #expect(NSDictionary(dictionary: result["result"] as? [String: Any] ?? ["missing": true]).isEqual(to: cliResult))

        let blobs = try httpGet("\(base)/api/v1/jobs/\(id)/blobs").json()["blobs"] as? [[String: Any]] ?? []
        #expect(blobs.count == Self.shards)

        // Metrics, page by page (7 rows a page): every row exactly once, in (shard, name, step) order.
        var rows: [[String: Any]] = []
        var after: String?
        var pages = 0
        repeat {
            var url = "\(base)/api/v1/jobs/\(id)/metrics?limit=7"
            if let after { url += "&after=" + after.addingPercentEncoding(withAllowedCharacters: .alphanumerics)! }
            let page = try httpGet(url)
            #expect(page.status == 200, "\(page.body)")
            let o = try page.json()
            rows += o["metrics"] as? [[String: Any]] ?? []
            after = o["next"] as? String
            pages += 1
        } while after != nil && pages < 100
        let total = Int(try cluster.query("SELECT count(*) AS n FROM tessera_metrics WHERE job_id = $1", [.int(Int64(id))])[0, "n"]!)!
        #expect(total == Self.shards * 9)
        #expect(rows.count == total)
        let keys = rows.map { "\($0["shard"] as? Int ?? -1)/\($0["name"] as? String ?? "")/\($0["step"] as? Int ?? -1)" }
        #expect(Set(keys).count == total)
        let ordered = rows.sorted {
            let a = ($0["shard"] as? Int ?? 0, $0["name"] as? String ?? "", $0["step"] as? Int ?? 0)
            let b = ($1["shard"] as? Int ?? 0, $1["name"] as? String ?? "", $1["step"] as? Int ?? 0)
            return a < b
        }
        #expect(ordered.map { "\($0["shard"]!)/\($0["step"]!)" } == rows.map { "\($0["shard"]!)/\($0["step"]!)" })
        #expect(pages == total / 7 + 1)  // the last page is short (54 = 7 x 7 + 5), so no empty page after it
        let filtered = try httpGet("\(base)/api/v1/jobs/\(id)/metrics?shard=2&limit=100").json()["metrics"] as? [[String: Any]] ?? []
        #expect(filtered.count == 9 && filtered.allSatisfy { $0["shard"] as? Int == 2 })
        let unknown = try httpGet("\(base)/api/v1/jobs/\(id)/metrics?name=nope").json()
        #expect((unknown["metrics"] as? [Any])?.isEmpty == true && unknown["available"] != nil)

        // Errors.
        let missing = try httpGet("\(base)/api/v1/jobs/999999")
        let missingError = try missing.json()["error"] as? String
        #expect(missing.status == 404 && missingError == "no job 999999")
        #expect(try httpGet("\(base)/api/v1/jobs/abc").status == 400)
        #expect(try httpGet("\(base)/api/v1/jobs/\(id)/metrics?after=junk").status == 400)
        #expect(try httpGet("\(base)/api/v1/jobs/\(id)/metrics?limit=20000").status == 400)
        #expect(try httpGet("\(base)/nowhere").status == 404)

        let workers = try httpGet("\(base)/api/v1/workers").json()
        #expect(Set((workers["workers"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String }) == ["w1", "w2"])

        // Prometheus: what happened, as the database records it.
        let scrape = try httpGet("\(base)/metrics")
        #expect(scrape.status == 200 && scrape.headers["content-type"]?.hasPrefix("text/plain") == true)
        let samples = try prometheusSamples(scrape.body)
        #expect(try value(samples, "tessera_shards_succeeded_total") == Double(Self.shards))
        #expect(try value(samples, "tessera_shard_duration_seconds_count") == Double(Self.shards))
        #expect(try value(samples, "tessera_shards_dispatched_total") == Double(Self.shards))
        #expect(try value(samples, "tessera_shards_failed_total") == 0)
        #expect(try value(samples, "tessera_metric_points_written_total") == Double(total))
        let blobBytes = Double(try cluster.query(
            "SELECT sum(size) AS n FROM tessera_checkpoints WHERE job_id = $1", [.int(Int64(id))])[0, "n"]!)!
        #expect(try value(samples, "tessera_blob_bytes_written_total") == blobBytes)
        #expect(try value(samples, "tessera_jobs", ["state": "succeeded"]) == 1)
        #expect(try value(samples, "tessera_shards", ["state": "queued"]) == 0)
        #expect(try value(samples, "tessera_workers_connected") == 2)
        #expect(try value(samples, "tessera_storage_full") == 0)
        #expect(try value(samples, "tessera_coordinator_active") == 1)
        // The histograms are recorded by the writer before the transport counts the commit.
        let commits = try value(samples, "tessera_writer_commits_total")
        #expect(commits > 0)
        #expect(try value(samples, "tessera_writer_batch_commands_count") >= commits)
        #expect(try value(samples, "tessera_writer_commit_seconds_count") >= commits)
        // Bounded labels: a state or a histogram bucket, never a job, shard or worker.
        let labelNames = Set(samples.flatMap { $0.labels.keys })
        #expect(labelNames.isSubset(of: ["state", "le"]), "labels: \(labelNames)")
        // Every metric says what it measures: a # HELP line right before its # TYPE line.
        let lines = scrape.body.split(separator: "\n").map(String.init)
        let typed = lines.indices.filter { lines[$0].hasPrefix("# TYPE ") }
        #expect(typed.count >= 20)
        for i in typed {
            let name = lines[i].split(separator: " ")[2]
            #expect(i > 0 && lines[i - 1].hasPrefix("# HELP \(name) ") && lines[i - 1].count > "# HELP \(name) ".count, "no help for \(name)")
        }
        // A second scrape adds nothing that did not happen.
        let again = try prometheusSamples(try httpGet("\(base)/metrics").body)
        #expect(try value(again, "tessera_shards_succeeded_total") == Double(Self.shards))
    }

    @Test func withKeysEveryRequestNeedsTheTokenAndAStandbySaysSo() throws {
        let db = try PostgresTestDatabase.create(migrate: true)
        defer { db.drop() }
        var template = Array("/tmp/tessera-http-XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw TestFailure("mkdtemp failed") }
        let dir = String(cString: p)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let keys = "\(dir)/keys"
        let gen = try tessera(["keygen", "coordinator", "--keys-dir", keys])
        #expect(gen.status == 0, "keygen: \(gen.stderr)")

        // Without keys, a non-loopback HTTP bind is refused before anything starts.
        let refused = try tessera([
            "coordinator", "--database-url", db.url, "--bind", "tcp://127.0.0.1:*", "--data-dir", "\(dir)/data0",
            "--http", "0.0.0.0:0",
        ])
        #expect(refused.status != 0)
        #expect(refused.stderr.contains("refusing to serve HTTP without a token"), "\(refused.stderr)")

        func start(_ name: String) throws -> (Process, String) {
            let file = "\(dir)/\(name).http"
            let proc = try spawnTessera(
                ["coordinator", "--database-url", db.url, "--bind", "tcp://127.0.0.1:*", "--keys-dir", keys,
                 "--data-dir", "\(dir)/data", "--http", "127.0.0.1:0", "--http-endpoint-file", file, "--log-level", "info"],
                log: "\(dir)/\(name).log")
            let deadline = Date().addingTimeInterval(30)
            while Date() < deadline {
                if let t = try? String(contentsOfFile: file, encoding: .utf8), !t.isEmpty {
                    return (proc, t.trimmingCharacters(in: .whitespacesAndNewlines))
                }
                guard proc.isRunning else { throw TestFailure("coordinator \(name) exited") }
                Thread.sleep(forTimeInterval: 0.05)
            }
            throw TestFailure("coordinator \(name) did not start its HTTP service")
        }
        let (active, base) = try start("active")
        defer {
            kill(active.processIdentifier, SIGTERM)
            active.waitUntilExit()
        }
        // The token was created with the first start, readable by its owner only.
        let token = try String(contentsOfFile: "\(keys)/http.token", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(token.count == 64)
        let mode = (try FileManager.default.attributesOfItem(atPath: "\(keys)/http.token")[.posixPermissions] as? NSNumber)?.intValue
        #expect(mode == 0o600)

        let anonymous = try httpGet("\(base)/api/v1/jobs")
        #expect(anonymous.status == 401)
        #expect(anonymous.headers["www-authenticate"]?.hasPrefix("Bearer") == true)
        #expect(try httpGet("\(base)/metrics").status == 401)
        #expect(try httpGet("\(base)/api/v1/jobs", headers: ["Authorization": "Bearer " + String(token.reversed())]).status == 401)
        #expect(try httpGet("\(base)/api/v1/jobs", headers: ["Authorization": token]).status == 401)
        let authorized = try httpGet("\(base)/api/v1/jobs", headers: ["Authorization": "Bearer \(token)"])
        #expect(authorized.status == 200, "\(authorized.body)")
        #expect(try httpGet("\(base)/metrics", headers: ["Authorization": "Bearer \(token)"]).status == 200)
        #expect(try httpGet("\(base)/healthz").status == 200)
        // A browser: /login?token= sets the token as a cookie; the dashboard then answers to the cookie alone.
        #expect(try httpGet("\(base)/").status == 401)
        #expect(try httpGet("\(base)/login?token=wrong").status == 401)
        let login = try httpGet("\(base)/login?token=\(token)")
        #expect(login.status == 303 && login.headers["location"] == "/")
        let cookie = login.headers["set-cookie"] ?? ""
        #expect(cookie.hasPrefix("tessera_token=\(token);") && cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"))
        let page = try httpGet("\(base)/", headers: ["Cookie": "other=1; tessera_token=\(token)"])
        #expect(page.status == 200 && page.headers["content-type"]?.hasPrefix("text/html") == true)
        #expect(page.body.contains("<h1>Jobs</h1>") && page.body.contains("No jobs match."))
        #expect(try httpGet("\(base)/", headers: ["Cookie": "tessera_token=x\(token)"]).status == 401)

        // A second coordinator on the same database waits as a standby: its HTTP service says so, and serves no data.
        let (standby, standbyBase) = try start("standby")
        defer {
            kill(standby.processIdentifier, SIGTERM)
            standby.waitUntilExit()
        }
        let h = try httpGet("\(standbyBase)/healthz")
        let role = try h.json()["role"] as? String
        #expect(h.status == 503 && role == "standby")
        let jobs = try httpGet("\(standbyBase)/api/v1/jobs", headers: ["Authorization": "Bearer \(token)"])
        let standbyError = try jobs.json()["error"] as? String
        #expect(jobs.status == 503 && standbyError?.contains("standby") == true)
        let scrape = try prometheusSamples(try httpGet("\(standbyBase)/metrics", headers: ["Authorization": "Bearer \(token)"]).body)
        #expect(try value(scrape, "tessera_coordinator_active") == 0)
    }
}
