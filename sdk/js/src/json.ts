import { ErrorCode, RunAgentError, malformed } from "./errors.js";

/**
 * Parses JSON text like JSON.parse, except that integer literals outside the
 * safe range (±2^53−1) become BigInt, and the Python extensions `NaN`
 * (→ null), `Infinity` and `-Infinity` (→ ±Infinity) are accepted.
 * Throws RunAgentError (INTERNAL_ERROR) on malformed text.
 */
export function parseJSON(text: string): unknown {
  const p = new Parser(text);
  let v: unknown;
  try {
    p.ws();
    v = p.value();
    p.ws();
  } catch (e) {
    if (e instanceof RunAgentError) throw e;
    if (e instanceof RangeError) throw malformed("malformed JSON: nested too deeply");
    throw malformed("malformed JSON: " + String((e as Error)?.message ?? e));
  }
  if (p.i !== text.length) p.fail("unexpected data after the value");
  return v;
}

const MAX_DEPTH = 10000;

class Parser {
  i = 0;
  depth = 0;
  constructor(readonly s: string) {}

  fail(msg: string): never {
    throw malformed(`malformed JSON at offset ${this.i}: ${msg}`);
  }

  ws(): void {
    const s = this.s;
    let i = this.i;
    for (;;) {
      const c = s.charCodeAt(i);
      if (c === 32 || c === 10 || c === 13 || c === 9) i++;
      else break;
    }
    this.i = i;
  }

  lit(word: string, v: unknown): unknown {
    if (this.s.startsWith(word, this.i)) {
      this.i += word.length;
      return v;
    }
    return this.fail("unexpected token");
  }

  value(): unknown {
    const c = this.s.charCodeAt(this.i);
    switch (c) {
      case 123 /* { */: return this.object();
      case 91 /* [ */: return this.array();
      case 34 /* " */: return this.string();
      case 116 /* t */: return this.lit("true", true);
      case 102 /* f */: return this.lit("false", false);
      case 110 /* n */: return this.lit("null", null);
      case 78 /* N */: return this.lit("NaN", null);
      case 73 /* I */: return this.lit("Infinity", Infinity);
      default:
        if (c === 45 /* - */ && this.s.startsWith("-Infinity", this.i)) return this.lit("-Infinity", -Infinity);
        if (c === 45 || (c >= 48 && c <= 57)) return this.number();
        if (Number.isNaN(c)) return this.fail("unexpected end of input");
        return this.fail("unexpected character " + JSON.stringify(this.s[this.i]));
    }
  }

  enter(): void {
    if (++this.depth > MAX_DEPTH) this.fail("nested too deeply");
  }

  object(): Record<string, unknown> {
    this.enter();
    this.i++;
    const out: Record<string, unknown> = {};
    this.ws();
    if (this.s.charCodeAt(this.i) === 125) {
      this.i++;
      this.depth--;
      return out;
    }
    for (;;) {
      this.ws();
      if (this.s.charCodeAt(this.i) !== 34) this.fail("expected a string key");
      const k = this.string();
      this.ws();
      if (this.s.charCodeAt(this.i) !== 58) this.fail("expected ':'");
      this.i++;
      this.ws();
      const v = this.value();
      if (k === "__proto__") Object.defineProperty(out, k, { value: v, enumerable: true, writable: true, configurable: true });
      else out[k] = v;
      this.ws();
      const c = this.s.charCodeAt(this.i);
      this.i++;
      if (c === 44) continue;
      if (c === 125) break;
      this.i--;
      this.fail("expected ',' or '}'");
    }
    this.depth--;
    return out;
  }

  array(): unknown[] {
    this.enter();
    this.i++;
    const out: unknown[] = [];
    this.ws();
    if (this.s.charCodeAt(this.i) === 93) {
      this.i++;
      this.depth--;
      return out;
    }
    for (;;) {
      this.ws();
      out.push(this.value());
      this.ws();
      const c = this.s.charCodeAt(this.i);
      this.i++;
      if (c === 44) continue;
      if (c === 93) break;
      this.i--;
      this.fail("expected ',' or ']'");
    }
    this.depth--;
    return out;
  }

  string(): string {
    const s = this.s;
    const start = this.i;
    let j = start + 1;
    let escaped = false;
    for (;;) {
      const q = s.indexOf('"', j);
      if (q < 0) this.fail("unterminated string");
      let b = q - 1;
      while (s.charCodeAt(b) === 92) b--;
      if ((q - 1 - b) % 2 === 0) {
        j = q;
        break;
      }
      escaped = true;
      j = q + 1;
    }
    const body = s.slice(start + 1, j);
    this.i = j + 1;
    if (!escaped && body.indexOf("\\") < 0) {
      // Control characters are not allowed raw in JSON strings.
      for (let k = 0; k < body.length; k++) if (body.charCodeAt(k) < 32) this.fail("control character in string");
      return body;
    }
    try {
      return JSON.parse(s.slice(start, j + 1)) as string;
    } catch (e) {
      this.i = start;
      return this.fail("bad string: " + (e as Error).message);
    }
  }

  number(): number | bigint {
    const s = this.s;
    const start = this.i;
    let i = start;
    if (s.charCodeAt(i) === 45) i++;
    const intStart = i;
    while (i < s.length && s.charCodeAt(i) >= 48 && s.charCodeAt(i) <= 57) i++;
    if (i === intStart) this.fail("bad number");
    if (i - intStart > 1 && s.charCodeAt(intStart) === 48) this.fail("leading zero in number");
    let isInt = true;
    if (s.charCodeAt(i) === 46) {
      isInt = false;
      i++;
      const f = i;
      while (i < s.length && s.charCodeAt(i) >= 48 && s.charCodeAt(i) <= 57) i++;
      if (i === f) this.fail("bad number");
    }
    const e = s.charCodeAt(i);
    if (e === 101 || e === 69) {
      isInt = false;
      i++;
      const sg = s.charCodeAt(i);
      if (sg === 43 || sg === 45) i++;
      const f = i;
      while (i < s.length && s.charCodeAt(i) >= 48 && s.charCodeAt(i) <= 57) i++;
      if (i === f) this.fail("bad number");
    }
    this.i = i;
    const text = s.slice(start, i);
    if (isInt && i - intStart > 15) {
      const big = BigInt(text);
      if (big > BigInt(Number.MAX_SAFE_INTEGER) || big < BigInt(Number.MIN_SAFE_INTEGER)) return big;
      return Number(big);
    }
    return Number(text);
  }
}

/**
 * Encodes v as JSON like JSON.stringify, except that BigInt values are
 * written as integer literals.
 */
export function stringifyJSON(v: unknown): string {
  const out = enc(v, false, 0);
  return out === undefined ? "null" : out;
}

function enc(v: unknown, inArray: boolean, depth: number): string | undefined {
  if (depth > MAX_DEPTH) throw new RunAgentError({ code: ErrorCode.VALIDATION, message: "input nested too deeply (or cyclic)" });
  if (v !== null && typeof v === "object" && typeof (v as any).toJSON === "function") v = (v as any).toJSON();
  switch (typeof v) {
    case "bigint": return v.toString();
    case "string": return JSON.stringify(v);
    case "number": return Number.isFinite(v) ? String(v) : "null";
    case "boolean": return v ? "true" : "false";
    case "undefined": case "function": case "symbol": return inArray ? "null" : undefined;
  }
  if (v === null) return "null";
  if (Array.isArray(v)) {
    const parts = new Array<string>(v.length);
    for (let i = 0; i < v.length; i++) parts[i] = enc(v[i], true, depth + 1)!;
    return "[" + parts.join(",") + "]";
  }
  const parts: string[] = [];
  for (const k of Object.keys(v as object)) {
    const e = enc((v as any)[k], false, depth + 1);
    if (e !== undefined) parts.push(JSON.stringify(k) + ":" + e);
  }
  return "{" + parts.join(",") + "}";
}

/**
 * Decodes a RunAgent "structured string" {"type": T, "payload": "<JSON>"}:
 * the outer JSON, then the payload. Integers beyond ±2^53−1 become BigInt;
 * a bare NaN is null, Infinity ±Infinity. Throws RunAgentError
 * (INTERNAL_ERROR) on malformed input.
 */
export function decodeStructured(s: string): unknown {
  return decodeStructuredValue(parseJSON(s));
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

function decodeStructuredValue(o: unknown): unknown {
  if (!isRecord(o)) throw malformed("malformed structured value: not an object");
  if (!("type" in o) && !("payload" in o)) throw malformed('malformed structured value: no "type" or "payload"');
  const p = o.payload;
  if (p === undefined || p === null) return null;
  if (typeof p === "string") {
    try {
      return parseJSON(p);
    } catch (e) {
      if (o.type === "string") return p; // a string payload that was not JSON-encoded
      throw malformed("malformed structured value: payload is not JSON");
    }
  }
  return p; // already decoded payload: accepted
}

/**
 * Decodes the "data" of a /run envelope or the "content" of a stream data
 * frame (already parsed): normally a string holding a structured string;
 * leniently a structured object, null, or a plain JSON value.
 */
export function decodeData(raw: unknown): unknown {
  if (raw === undefined || raw === null) return null;
  if (typeof raw === "string") return decodeStructured(raw);
  if (isRecord(raw) && typeof raw.type === "string" && "payload" in raw) return decodeStructuredValue(raw);
  return raw;
}
