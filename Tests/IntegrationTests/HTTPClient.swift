// A small HTTP/1.1 GET over a plain socket for the HTTP service tests: no client library between the test and the
// bytes the service sends (status line, headers, Content-Length or chunked body).

import Foundation

struct HTTPResult {
    var status: Int
    /// Header names in lower case.
    var headers: [String: String]
    var body: String

    func json() throws -> [String: Any] {
        guard let o = try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any] else {
            throw TestFailure("not a JSON object: \(body.prefix(300))")
        }
        return o
    }
}

/// GET `url` (`http://HOST:PORT/path?query`), with `Connection: close`; the whole response.
func httpGet(_ url: String, headers: [String: String] = [:], timeout: Double = 15) throws -> HTTPResult {
    guard url.hasPrefix("http://") else { throw TestFailure("not an http:// URL: \(url)") }
    let rest = url.dropFirst(7)
    let slash = rest.firstIndex(of: "/") ?? rest.endIndex
    let hostPort = rest[..<slash]
    let path = slash == rest.endIndex ? "/" : String(rest[slash...])
    guard let colon = hostPort.lastIndex(of: ":"), let port = UInt16(hostPort[hostPort.index(after: colon)...]) else {
        throw TestFailure("no port in \(url)")
    }
    let host = String(hostPort[..<colon])

    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw TestFailure("socket failed") }
    defer { close(fd) }
    var tv = timeval(tv_sec: Int(timeout), tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = port.bigEndian
    addr.sin_addr.s_addr = inet_addr(host == "localhost" ? "127.0.0.1" : host)
    let connected = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard connected == 0 else { throw TestFailure("cannot connect to \(hostPort): errno \(errno)") }
    var request = "GET \(path) HTTP/1.1\r\nHost: \(hostPort)\r\nConnection: close\r\n"
    for (k, v) in headers { request += "\(k): \(v)\r\n" }
    request += "\r\n"
    let out = Array(request.utf8)
    guard out.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, 0) }) == out.count else { throw TestFailure("send failed") }

    var data: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n < 0 { throw TestFailure("recv failed (errno \(errno)) after \(data.count) bytes from \(url)") }
        if n == 0 { break }
        data += buffer[0..<n]
    }
    let separator: [UInt8] = [13, 10, 13, 10]
    guard let split = (0..<max(0, data.count - 3)).first(where: { Array(data[$0..<$0 + 4]) == separator }) else {
        throw TestFailure("no header end in the response from \(url)")
    }
    let head = String(decoding: data[0..<split], as: UTF8.self).components(separatedBy: "\r\n")
    let statusParts = head[0].split(separator: " ")
    guard statusParts.count >= 2, let status = Int(statusParts[1]) else { throw TestFailure("bad status line '\(head[0])'") }
    var fields: [String: String] = [:]
    for line in head.dropFirst() {
        guard let c = line.firstIndex(of: ":") else { continue }
        fields[line[..<c].lowercased()] = line[line.index(after: c)...].trimmingCharacters(in: .whitespaces)
    }
    var body = Array(data[(split + 4)...])
    if fields["transfer-encoding"]?.lowercased() == "chunked" {
        var decoded: [UInt8] = []
        var i = 0
        while i < body.count {
            guard let lineEnd = (i..<body.count - 1).first(where: { body[$0] == 13 && body[$0 + 1] == 10 }),
                let size = Int(String(decoding: body[i..<lineEnd], as: UTF8.self), radix: 16)
            else { throw TestFailure("bad chunk in the response from \(url)") }
            if size == 0 { break }
            decoded += body[(lineEnd + 2)..<(lineEnd + 2 + size)]
            i = lineEnd + 2 + size + 2
        }
        body = decoded
    } else if let length = fields["content-length"].flatMap(Int.init) {
        guard body.count == length else { throw TestFailure("body of \(body.count) bytes, Content-Length \(length)") }
    }
    return HTTPResult(status: status, headers: fields, body: String(decoding: body, as: UTF8.self))
}

/// Prometheus text: every sample as (name, labels, value); `# HELP`/`# TYPE` lines skipped.
func prometheusSamples(_ text: String) throws -> [(name: String, labels: [String: String], value: Double)] {
    var out: [(String, [String: String], Double)] = []
    for line in text.split(separator: "\n") where !line.hasPrefix("#") && !line.isEmpty {
        guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else {
            throw TestFailure("not a sample line: '\(line)'")
        }
        let series = line[..<space]
        var labels: [String: String] = [:]
        var name = String(series)
        if let brace = series.firstIndex(of: "{") {
            name = String(series[..<brace])
            let inner = series[series.index(after: brace)..<(series.lastIndex(of: "}") ?? series.endIndex)]
            for pair in inner.split(separator: ",") {
                let kv = pair.split(separator: "=", maxSplits: 1)
                guard kv.count == 2 else { throw TestFailure("bad label '\(pair)' in '\(line)'") }
                labels[String(kv[0])] = String(kv[1]).trimmingCharacters(in: CharacterSet(charactersIn: "\""))
            }
        }
        out.append((name, labels, value))
    }
    return out
}
