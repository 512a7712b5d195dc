// The read-only JSON API (docs/http.md): each route is one client request of SPEC §7, with its query parameters as
// the request's fields, and the reply's body as the response. Wire statuses become HTTP statuses.

import Hummingbird
import TesseraCoordinator
import TesseraJSON
import TesseraModel
import TesseraProtocol

struct JSONAPI {
    let coordinator: Coordinator

    /// Metric rows per page when `limit` is not given, and the most a page may hold.
    static let defaultMetricsPage = 1000
    static let maxMetricsPage = 10_000

    func register(on router: Router<BasicRequestContext>) {
        router.get("/healthz") { _, _ -> Response in
            let active = coordinator.isActive
            return Self.json(active ? .ok : .serviceUnavailable, ["ok": .bool(active), "role": .string(active ? "active" : "standby")])
        }
        router.get("/api/v1/jobs") { request, _ -> Response in
            let q = request.uri.queryParameters
            var body: JSONObject = [:]
            do {
                if let v = q["limit"] { body["limit"] = .int(try Self.int(v, "limit")) }
                if let v = q["since"] {
                    guard let d = Double(v) else { throw APIError("'since' must be seconds since 1970 (got '\(v)')") }
                    body["since"] = .number(d)
                }
            } catch let e as APIError { return Self.error(.badRequest, e.message) }
            for key in ["state", "kind", "algorithm", "name"] { if let v = q[Substring(key)] { body[key] = .string(String(v)) } }
            return await call("status", body)
        }
        router.get("/api/v1/jobs/{id}") { request, context -> Response in
            guard let id = context.parameters.get("id", as: Int.self), id > 0 else { return Self.badJobID(context) }
            let events = request.uri.queryParameters["events"].map { $0 == "true" || $0 == "1" } ?? false
            return await call("status", ["job": .int(id), "events": .bool(events)])
        }
        router.get("/api/v1/jobs/{id}/shards") { _, context -> Response in
            guard let id = context.parameters.get("id", as: Int.self), id > 0 else { return Self.badJobID(context) }
            return await call("status", ["job": .int(id)]) { ["shards": $0["job"]?["shards"] ?? .array([])] }
        }
        router.get("/api/v1/jobs/{id}/events") { _, context -> Response in
            guard let id = context.parameters.get("id", as: Int.self), id > 0 else { return Self.badJobID(context) }
            return await call("status", ["job": .int(id), "events": .bool(true)]) { ["events": $0["job"]?["events"] ?? .array([])] }
        }
        router.get("/api/v1/jobs/{id}/result") { _, context -> Response in
            guard let id = context.parameters.get("id", as: Int.self), id > 0 else { return Self.badJobID(context) }
            return await call("result", ["job": .int(id)])
        }
        router.get("/api/v1/jobs/{id}/blobs") { request, context -> Response in
            guard let id = context.parameters.get("id", as: Int.self), id > 0 else { return Self.badJobID(context) }
            var body: JSONObject = ["job": .int(id)]
            if let v = request.uri.queryParameters["shard"] {
                guard let s = Int(v), s >= 0 else { return Self.error(.badRequest, "'shard' must be a shard index (got '\(v)')") }
                body["shard"] = .int(s)
            }
            return await call("blob.list", body)
        }
        router.get("/api/v1/jobs/{id}/metrics") { request, context -> Response in
            guard let id = context.parameters.get("id", as: Int.self), id > 0 else { return Self.badJobID(context) }
            let q = request.uri.queryParameters
            var body: JSONObject
            do {
                body = try Self.pageBody(job: id, request, unit: "rows")
                if let v = q["name"] { body["name"] = .string(String(v)) }
                if let v = q["after"] { body["after"] = try Self.cursor(v) }
                if q["list"].map({ $0 == "true" || $0 == "1" }) ?? false { body["list"] = .bool(true) }
            } catch let e as APIError { return Self.error(.badRequest, e.message) }
            return await call("metrics", body) { reply in
                // The cursor as one query value: `after=SHARD,STEP,NAME` (the name last: it may hold commas).
                var o = reply.objectValue ?? [:]
                if let n = o["next"]?.objectValue, let s = n["shard"]?.intValue, let k = n["step"]?.intValue,
                    let name = n["name"]?.stringValue
                {
                    o["next"] = .string("\(s),\(k),\(name)")
                }
                return o
            }
        }
        router.get("/api/v1/jobs/{id}/logs") { request, context -> Response in
            guard let id = context.parameters.get("id", as: Int.self), id > 0 else { return Self.badJobID(context) }
            let q = request.uri.queryParameters
            var body: JSONObject
            do {
                body = try Self.pageBody(job: id, request, unit: "lines")
                if let v = q["after"] {
                    let a = try Self.int(v, "after")
                    guard a >= 0 else { throw APIError("'after' must be the 'next' of the page before (got \(a))") }
                    body["after"] = .int(a)
                }
            } catch let e as APIError { return Self.error(.badRequest, e.message) }
            return await call("logs", body)
        }
        router.get("/api/v1/workers") { _, _ -> Response in await call("workers", [:]) }
    }

    /// One client request; `transform` reshapes a successful reply's body.
    private func call(_ method: String, _ body: JSONObject, transform: (@Sendable (JSONValue) -> JSONObject)? = nil) async -> Response {
        guard let reply = await coordinator.request(method, body: body) else {
            return Self.error(.serviceUnavailable, "this coordinator is a standby (another one holds the database); ask the active one")
        }
        guard reply.status == WireStatus.ok else {
            let message = (try? JSONValue.parse(reply.body))?["error"]?.stringValue ?? "request failed"
            var extra: JSONObject = [:]
            if let available = (try? JSONValue.parse(reply.body))?["available"] { extra["available"] = available }
            return Self.error(Self.httpStatus(reply.status), message, extra: extra)
        }
        guard let transform else {
            return Response(
                status: .ok, headers: [.contentType: "application/json"], body: ResponseBody(byteBuffer: ByteBuffer(bytes: reply.body)))
        }
        guard let parsed = try? JSONValue.parse(reply.body) else {
            return Self.error(.internalServerError, "the coordinator's reply is not JSON")
        }
        return Self.json(.ok, transform(parsed))
    }

    static func httpStatus(_ wire: UInt16) -> HTTPResponse.Status {
        switch wire {
        case WireStatus.badRequest, WireStatus.invalidSpec: .badRequest
        case WireStatus.notFound: .notFound
        case WireStatus.conflict: .conflict
        case WireStatus.tooLarge: .contentTooLarge
        case WireStatus.unavailable: .serviceUnavailable
        default: .internalServerError
        }
    }

    static func json(_ status: HTTPResponse.Status, _ object: JSONObject, headers: HTTPFields = [:]) -> Response {
        var h = headers
        h[.contentType] = "application/json"
        return Response(status: status, headers: h, body: ResponseBody(byteBuffer: ByteBuffer(string: JSONValue.object(object).render())))
    }

    /// Errors have one shape: `{"error": "...", "status": 404}` (plus `available` where the request can say what exists).
    static func error(_ status: HTTPResponse.Status, _ message: String, extra: JSONObject = [:], headers: HTTPFields = [:]) -> Response {
        var o = extra
        o["error"] = .string(message)
        o["status"] = .int(status.code)
        return json(status, o, headers: headers)
    }

    static func badJobID(_ context: BasicRequestContext) -> Response {
        error(.badRequest, "the job id must be a positive whole number (got '\(context.parameters.get("id") ?? "")')")
    }

    /// The `job`, `limit` (default and maximum of a metrics page) and `shard` of a paged read, checked.
    static func pageBody(job id: Int, _ request: Request, unit: String) throws -> JSONObject {
        let q = request.uri.queryParameters
        var body: JSONObject = ["job": .int(id)]
        let limit = try q["limit"].map { try int($0, "limit") } ?? defaultMetricsPage
        guard (1...maxMetricsPage).contains(limit) else {
            throw APIError("'limit' must be from 1 to \(maxMetricsPage) \(unit) (got \(limit)); page on with 'after'")
        }
        body["limit"] = .int(limit)
        if let v = q["shard"] {
            let s = try int(v, "shard")
            guard s >= 0 else { throw APIError("'shard' must be a shard index (got \(s))") }
            body["shard"] = .int(s)
        }
        return body
    }

    static func int(_ text: Substring, _ name: String) throws -> Int {
        guard let v = Int(text) else { throw APIError("'\(name)' must be a whole number (got '\(text)')") }
        return v
    }

    /// `SHARD,STEP,NAME` as the metrics request's `after`.
    static func cursor(_ text: Substring) throws -> JSONValue {
        let parts = text.split(separator: ",", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3, let s = Int(parts[0]), s >= 0, let k = Int(parts[1]), !parts[2].isEmpty else {
            throw APIError("'after' must be SHARD,STEP,NAME: the 'next' of the page before (got '\(text)')")
        }
        return .object(["shard": .int(s), "step": .int(k), "name": .string(String(parts[2]))])
    }
}

struct APIError: Error {
    let message: String
    init(_ message: String) { self.message = message }
}
