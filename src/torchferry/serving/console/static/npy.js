// Reading a NumPy .npy file in the page: the magic, the header dict ({'descr': '<f4',
// 'fortran_order': False, 'shape': (2, 3)}), then the raw little-endian data in C order.

import { DATATYPES, fromBytes } from "./tensors.js";

/** .npy descr -> V2 datatype (little-endian or byte-sized only). */
const DESCRS = {
  "<f2": "FP16", "<f4": "FP32", "<f8": "FP64",
  "|i1": "INT8", "<i2": "INT16", "<i4": "INT32", "<i8": "INT64",
  "|u1": "UINT8", "<u2": "UINT16", "<u4": "UINT32", "<u8": "UINT64",
  "|b1": "BOOL",
};

export class NpyError extends Error {}

function headerValue(header, key) {
  const match = header.match(new RegExp(`['"]${key}['"]\\s*:\\s*('[^']*'|"[^"]*"|True|False|\\([^)]*\\))`));
  if (!match) throw new NpyError(`the .npy header has no '${key}'`);
  return match[1];
}

/** Parse an ArrayBuffer holding a .npy file: {descr, datatype, shape, data (typed), bytes}. */
export function parseNpy(buffer) {
  const all = new Uint8Array(buffer);
  const magic = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY
  if (all.length < 10 || magic.some((b, i) => all[i] !== b)) throw new NpyError("not a .npy file (no \\x93NUMPY magic)");
  const major = all[6];
  const view = new DataView(buffer);
  let headerLength;
  let offset;
  if (major === 1) {
    headerLength = view.getUint16(8, true);
    offset = 10;
  } else if (major === 2 || major === 3) {
    headerLength = view.getUint32(8, true);
    offset = 12;
  } else {
    throw new NpyError(`.npy format version ${major} is not supported`);
  }
  const header = new TextDecoder(major === 3 ? "utf-8" : "latin1").decode(all.subarray(offset, offset + headerLength));
  const descr = headerValue(header, "descr").slice(1, -1);
  const datatype = DESCRS[descr.replace(/^=/, "<")];
  if (!datatype) {
    throw new NpyError(`dtype ${descr} is not supported (little-endian numbers and bools only: ${Object.keys(DESCRS).join(" ")})`);
  }
  if (headerValue(header, "fortran_order") === "True") throw new NpyError("Fortran-ordered arrays are not supported: save it in C order");
  const shapeText = headerValue(header, "shape").slice(1, -1).trim();
  const shape = shapeText ? shapeText.split(",").map((s) => s.trim()).filter(Boolean).map(Number) : [];
  if (shape.some((n) => !Number.isInteger(n) || n < 0)) throw new NpyError(`bad shape (${shapeText})`);
  const count = shape.reduce((a, b) => a * b, 1);
  const start = offset + headerLength;
  const length = count * DATATYPES[datatype][1];
  if (all.length - start < length) {
    throw new NpyError(`the file is cut short: ${all.length - start} data bytes for shape (${shape.join(", ")}) of ${descr}`);
  }
  const bytes = all.slice(start, start + length);
  return { descr, datatype, shape, data: fromBytes(bytes, datatype), bytes };
}
