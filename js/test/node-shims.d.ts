// The few Node APIs the tests use (the package deliberately has no @types/node dependency).
declare module "node:fs" {
  export function readFileSync(path: string | URL, encoding: "utf8"): string;
  export function existsSync(path: string | URL): boolean;
}
