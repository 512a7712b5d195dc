// The coordinator's HTTP service on `--http HOST:PORT` (docs/http.md): a read-only JSON API over the same client
// requests the CLI sends over ZeroMQ (answered by the coordinator's read pool, never on the transport thread), and
// Prometheus `/metrics`. Without keys it binds loopback only and asks for nothing; with keys (`--keys-dir`) every
// request but `/healthz` needs `Authorization: Bearer <token>` (the keys directory's `http.token`).

import Foundation
import Hummingbird
import Logging
import Prometheus
import ServiceLifecycle
import TesseraCoordinator
import TesseraJSON
import TesseraModel
import TesseraProtocol

public struct HTTPConfiguration: Sendable {
    public var host: String
    public var port: Int
    /// Required as `Authorization: Bearer TOKEN` when set (keys are configured).
    public var token: String?
    /// If set, `http://HOST:PORT` is written here once the service listens (for `--http 127.0.0.1:0`).
    public var endpointFile: String?

    public init(host: String, port: Int, token: String? = nil, endpointFile: String? = nil) {
        self.host = host
        self.port = port
        self.token = token
        self.endpointFile = endpointFile
    }

    /// `HOST:PORT` (`[V6]:PORT` for IPv6; port 0 picks a free one). Without a token the host must be loopback:
    /// an unauthenticated status page on a cluster network is how Ray's dashboard was taken over (CVE-2023-48022).
    public static func parse(_ text: String, token: String?) throws -> HTTPConfiguration {
        let host: String
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                throw HTTPServiceError("--http must be HOST:PORT, e.g. 127.0.0.1:8080 (got '\(text)')")
            }
            host = String(text[text.index(after: text.startIndex)..<close])
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":") else {
                throw HTTPServiceError("--http must be HOST:PORT, e.g. 127.0.0.1:8080 (got '\(text)')")
            }
            host = String(text[..<colon])
            portText = text[text.index(after: colon)...]
        }
        guard !host.isEmpty, let port = Int(portText), (0...65535).contains(port) else {
            throw HTTPServiceError("--http must be HOST:PORT with a port from 0 to 65535, e.g. 127.0.0.1:8080 (got '\(text)')")
        }
        let loopback = host == "localhost" || host.hasPrefix("127.") || host == "::1"
        if token == nil && !loopback {
            throw HTTPServiceError(
                "refusing to serve HTTP without a token on \(text): without keys the HTTP service binds only to loopback "
                    + "(127.0.0.1:PORT). With --keys-dir every request needs the token in DIR/http.token "
                    + "(docs/http.md, \"Access\")")
        }
        return HTTPConfiguration(host: host, port: port, token: token)
    }
}

public struct HTTPServiceError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The HTTP service as a `Service` of the coordinator's `ServiceGroup`: it stops with graceful shutdown.
public struct HTTPService: Service {
    let coordinator: Coordinator
    let exporter: PrometheusExporter
    let configuration: HTTPConfiguration
    let logger: Logger

    public init(coordinator: Coordinator, registry: PrometheusCollectorRegistry, configuration: HTTPConfiguration, logger: Logger) {
        self.coordinator = coordinator
        self.exporter = PrometheusExporter(coordinator: coordinator, registry: registry)
        self.configuration = configuration
        self.logger = logger
    }

    public func run() async throws {
        let router = Router(context: BasicRequestContext.self)
        if let token = configuration.token { router.add(middleware: BearerToken(token: token)) }
        JSONAPI(coordinator: coordinator).register(on: router)
        Dashboard(coordinator: coordinator).register(on: router)
        if let token = configuration.token {
            // A browser cannot add the header: /login?token=TOKEN sets it as an HttpOnly cookie, then shows the jobs.
            router.get("/login") { request, _ -> Response in
                guard let given = request.uri.queryParameters["token"], BearerToken<BasicRequestContext>.equal(Array(given.utf8), Array(token.utf8)) else {
                    return JSONAPI.error(.unauthorized, "wrong or missing token: open /login?token=TOKEN with the token in the keys directory's http.token")
                }
                return Response(status: .seeOther, headers: [
                    .location: "/", .setCookie: "\(BearerToken<BasicRequestContext>.cookie)=\(token); Path=/; HttpOnly; SameSite=Strict",
                ])
            }
        }
        router.get("/metrics") { _, _ -> Response in
            let text = await exporter.scrape()
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: ResponseBody(byteBuffer: ByteBuffer(string: text)))
        }
        let app = Application(
            router: router,
            configuration: ApplicationConfiguration(address: .hostname(configuration.host, port: configuration.port), serverName: nil),
            onServerRunning: { [configuration, logger] channel in
                let port = channel.localAddress?.port ?? configuration.port
                let host = configuration.host.contains(":") ? "[\(configuration.host)]" : configuration.host
                let url = "http://\(host):\(port)"
                logger.info("HTTP service listening", metadata: ["http": "\(url)", "auth": "\(configuration.token == nil ? "none (loopback)" : "bearer token")"])
                if let file = configuration.endpointFile {
                    let tmp = file + ".tmp"
                    if FileManager.default.createFile(atPath: tmp, contents: Data((url + "\n").utf8)) { _ = rename(tmp, file) }
                }
            },
            logger: logger)
        try await app.run()
    }
}

/// Every request but `/healthz` and `/login` must carry `Authorization: Bearer TOKEN` (or, from a browser, the
/// cookie `/login` sets); the comparison takes the same time wherever the first difference is.
struct BearerToken<Context: RequestContext>: RouterMiddleware {
    let token: String
    static var cookie: String { "tessera_token" }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        if request.uri.path == "/healthz" || request.uri.path == "/login" { return try await next(request, context) }
        let header = request.headers[.authorization].flatMap { value -> Substring? in
            value.hasPrefix("Bearer ") ? value.dropFirst(7) : nil
        }
        let cookie = request.headers[.cookie].flatMap { value -> Substring? in
            value.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces) }
                .first { $0.hasPrefix(Self.cookie + "=") }.map { Substring($0.dropFirst(Self.cookie.count + 1)) }
        }
        let given = header ?? cookie
        guard let given, Self.equal(Array(given.utf8), Array(token.utf8)) else {
            return JSONAPI.error(.unauthorized, "this coordinator's HTTP service needs 'Authorization: Bearer TOKEN' (the token is in its keys directory, http.token)",
                                 headers: [.wwwAuthenticate: "Bearer realm=\"tessera\""])
        }
        return try await next(request, context)
    }

    static func equal(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        var diff = UInt8(a.count == b.count ? 0 : 1)
        for i in 0..<max(a.count, b.count) {
            diff |= (i < a.count ? a[i] : 0) ^ (i < b.count ? b[i] : 0)
        }
        return diff == 0
    }
}
