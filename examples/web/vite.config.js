// The demo page (docs/web.md). @powersync/web runs SQLite (wa-sqlite, WebAssembly) in web
// workers: Vite must not pre-bundle it, and its workers are ES modules.
import { defineConfig } from 'vite';

export default defineConfig({
  optimizeDeps: {
    exclude: ['@powersync/web', '@journeyapps/wa-sqlite'],
  },
  worker: { format: 'es' },
  build: { target: 'es2022' },
  server: { host: '127.0.0.1', strictPort: true },
  // demo.test: the browser tests' name for this machine that is not a loopback name
  preview: { host: '127.0.0.1', strictPort: true, allowedHosts: ['demo.test'] },
});
