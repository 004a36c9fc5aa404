import type { NextConfig } from "next";

const nextConfig: NextConfig = {
  // The browser suite builds this app on every run: `npm run typecheck` (tsc) checks the types
  // once, so the build does not do it again.
  typescript: { ignoreBuildErrors: true },
  poweredByHeader: false,
};

export default nextConfig;
