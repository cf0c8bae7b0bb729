// Tensors in the page: V2 datatypes and their typed arrays, nested JSON arrays <-> flat
// values and a shape, and the little-endian bytes of the V2 binary extension.

/** V2 datatype -> [TypedArray, bytes per element]; FP16 travels as its raw 16 bits. */
export const DATATYPES = {
  BOOL: [Uint8Array, 1],
  UINT8: [Uint8Array, 1],
  UINT16: [Uint16Array, 2],
  UINT32: [Uint32Array, 4],
  UINT64: [BigUint64Array, 8],
  INT8: [Int8Array, 1],
  INT16: [Int16Array, 2],
  INT32: [Int32Array, 4],
  INT64: [BigInt64Array, 8],
  FP16: [Uint16Array, 2],
  FP32: [Float32Array, 4],
  FP64: [Float64Array, 8],
};

/** The shape of a nested array (it must be rectangular). */
export function shapeOf(value) {
  const shape = [];
  let level = value;
  while (Array.isArray(level)) {
    shape.push(level.length);
    level = level[0];
  }
  const check = (node, depth) => {
    if (depth === shape.length) {
      if (Array.isArray(node)) throw new Error("the data is not rectangular (ragged nesting)");
      return;
    }
    if (!Array.isArray(node) || node.length !== shape[depth]) {
      throw new Error(`the data is not rectangular: dimension ${depth} should have ${shape[depth]} items`);
    }
    for (const child of node) check(child, depth + 1);
  };
  check(value, 0);
  return shape;
}

export function flatten(value) {
  return Array.isArray(value) ? value.flat(Infinity) : [value];
}

/** Flat values -> nested arrays of `shape` (a scalar for shape []). */
export function nest(flat, shape) {
  if (!shape.length) return flat[0];
  const build = (offset, depth) => {
    const size = shape.slice(depth + 1).reduce((a, b) => a * b, 1);
    const out = [];
    for (let i = 0; i < shape[depth]; i += 1) {
      out.push(depth === shape.length - 1 ? flat[offset + i] : build(offset + i * size, depth + 1));
    }
    return out;
  };
  return build(0, 0);
}

/** A typed array's values as JSON can carry them (64-bit integers as Numbers, BOOL as booleans). */
export function jsonValues(typed, datatype) {
  const values = Array.from(typed, (x) => (typeof x === "bigint" ? Number(x) : x));
  return datatype === "BOOL" ? values.map((x) => x !== 0) : values;
}

/** Flat JSON values -> the little-endian bytes of `datatype` (for the binary extension). */
export function toBytes(values, datatype) {
  const entry = DATATYPES[datatype];
  if (!entry) throw new Error(`${datatype} cannot be sent as binary from the console`);
  if (datatype === "FP16") throw new Error("FP16 data must come from a .npy file (<f2)");
  const [Typed] = entry;
  const big = Typed === BigInt64Array || Typed === BigUint64Array;
  const typed = Typed.from(values, (x) => (big ? BigInt(Math.trunc(Number(x))) : typeof x === "boolean" ? Number(x) : x));
  return new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength);
}

/** Little-endian bytes -> a typed array of `datatype` (copied, so alignment never matters). */
export function fromBytes(bytes, datatype) {
  const entry = DATATYPES[datatype];
  if (!entry) return null;
  const [Typed, size] = entry;
  if (bytes.byteLength % size) throw new Error(`${bytes.byteLength} bytes are not whole ${datatype} values`);
  const copy = bytes.slice().buffer;
  return new Typed(copy, 0, bytes.byteLength / size);
}
