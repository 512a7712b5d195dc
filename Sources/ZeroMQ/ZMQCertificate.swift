// CURVE certificates in the ZeroMQ ecosystem's usual text form (czmq's zcert, ZPL syntax): a public certificate
// `NAME.key` holds the public key; the secret one, `NAME.key_secret`, holds both keys. Both are Z85 text.
//
//     #   ****  Generated on 2026-12-02 16:30:00 UTC by tessera keygen  ****
//     #   ZeroMQ CURVE Public Certificate
//     metadata
//         name = "worker-a"
//     curve
//         public-key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
//
// Only the subset of ZPL these files use is read: `#` comments, blank lines, the `metadata` and `curve` sections
// and `name = "value"` lines indented under them. Anything else is an error that names the line.

import Foundation

public struct ZMQCertificate: Sendable, Equatable {
    public var publicKey: String
    /// Present in a secret certificate only.
    public var secretKey: String?
    /// The `metadata` section (e.g. `name`), in file order.
    public var metadata: [(String, String)]

    public init(publicKey: String, secretKey: String? = nil, metadata: [(String, String)] = []) {
        self.publicKey = publicKey
        self.secretKey = secretKey
        self.metadata = metadata
    }

    public static func == (a: Self, b: Self) -> Bool {
        a.publicKey == b.publicKey && a.secretKey == b.secretKey && a.metadata.elementsEqual(b.metadata, by: ==)
    }

    public var keyPair: ZMQCurveKeyPair? { secretKey.map { ZMQCurveKeyPair(publicKey: publicKey, secretKey: $0) } }

    public struct ParseError: Error, Sendable, CustomStringConvertible {
        public var line: Int
        public var message: String
        public var description: String { line > 0 ? "line \(line): \(message)" : message }
    }

    /// Parses a certificate. A secret key, when present, must belong to the public key (zmq_curve_public).
    public static func parse(_ text: String) throws(ParseError) -> ZMQCertificate {
        var section: String?
        var metadata: [(String, String)] = []
        var publicKey: String?
        var secretKey: String?
        for (i, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let number = i + 1
            let line = raw.hasSuffix("\r") ? raw.dropLast() : raw
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
            let indented = line.first == " " || line.first == "\t"
            if !indented {
                guard trimmed == "metadata" || trimmed == "curve" else {
                    throw ParseError(line: number, message: "expected a 'metadata' or 'curve' section, found '\(trimmed)'")
                }
                section = trimmed
                continue
            }
            guard let section else { throw ParseError(line: number, message: "an indented line outside any section") }
            guard let eq = trimmed.firstIndex(of: "=") else {
                throw ParseError(line: number, message: "expected name = \"value\"")
            }
            let name = trimmed[..<eq].trimmingCharacters(in: .whitespaces)
            var value = trimmed[trimmed.index(after: eq)...].trimmingCharacters(in: .whitespaces)
            if value.count >= 2, value.hasPrefix("\""), value.hasSuffix("\"") { value = String(value.dropFirst().dropLast()) }
            switch (section, name) {
            case ("curve", "public-key"):
                guard ZMQ.isZ85Key(value) else { throw ParseError(line: number, message: "public-key is not 40 Z85 characters") }
                publicKey = value
            case ("curve", "secret-key"):
                guard ZMQ.isZ85Key(value) else { throw ParseError(line: number, message: "secret-key is not 40 Z85 characters") }
                secretKey = value
            case ("curve", _):
                throw ParseError(line: number, message: "unknown curve field '\(name)' (public-key, secret-key)")
            default:
                metadata.append((name, value))
            }
        }
        guard let publicKey else { throw ParseError(line: 0, message: "no curve public-key") }
        if let secretKey {
            guard (try? ZMQ.curvePublicKey(secretKey: secretKey)) == publicKey else {
                throw ParseError(line: 0, message: "the secret-key does not belong to the public-key")
            }
        }
        return ZMQCertificate(publicKey: publicKey, secretKey: secretKey, metadata: metadata)
    }

    /// The certificate's text; `secret: true` includes the secret key (the `.key_secret` file).
    public func render(secret: Bool, generatedBy tool: String, at date: Date = Date()) -> String {
        let stamp = ISO8601DateFormatter.string(from: date, timeZone: TimeZone(identifier: "UTC")!, formatOptions: [.withFullDate, .withSpaceBetweenDateAndTime, .withFullTime])
        var out = "#   ****  Generated on \(stamp) by \(tool)  ****\n"
        if secret && secretKey != nil {
            out += "#   ZeroMQ CURVE **Secret** Certificate\n"
            out += "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n\n"
        } else {
            out += "#   ZeroMQ CURVE Public Certificate\n"
            out += "#   Exchange securely, or use a secure mechanism to verify the contents\n"
            out += "#   of this file after exchange.\n\n"
        }
        out += "metadata\n"
        for (name, value) in metadata { out += "    \(name) = \"\(value)\"\n" }
        out += "curve\n"
        out += "    public-key = \"\(publicKey)\"\n"
        if secret, let secretKey { out += "    secret-key = \"\(secretKey)\"\n" }
        return out
    }
}
