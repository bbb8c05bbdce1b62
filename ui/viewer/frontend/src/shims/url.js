// The browser's own URL classes for a dependency that asks Node's "url" module (xmlbuilder2, via dcmjs).
export const URL = globalThis.URL;
export const URLSearchParams = globalThis.URLSearchParams;
export default { URL, URLSearchParams };
