// JSON lives in its own leaf module, TesseraJSON (JSONValue, the parser and renderer, the Codable bridge), so that
// TesseraCompute can use it too. Every TesseraCore user keeps seeing it.
@_exported import TesseraJSON
