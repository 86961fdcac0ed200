// The browser proof, driven by tests/tests/browser.rs: Debian's chromium (headless, over the
// DevTools protocol through playwright-core; no browser is ever downloaded) opens a page served
// from an origin other than the API's and, as an instructor, uploads a video with a presigned
// PUT and another with a multipart upload, completes both, waits until they are ready and plays
// the HLS ladders with hls.js to the end through the signed URLs (every rendition of the second).
//
// Then the storefront steps: an anonymous visitor plays a free preview lesson and sees a catalogue
// thumbnail through a plain <img>.
//
// Environment: LECTERN_API_URL, LECTERN_PAGE_URL, LECTERN_TOKEN (an instructor's access token),
// LECTERN_COURSE_ID and LECTERN_SECTION_ID (a published course of that instructor and one of its
// sections), LECTERN_NODE_DIR (where bootstrap installed the npm packages), CHROMIUM (default
// /usr/bin/chromium). Prints one line `RESULT {json}`; exits 1 at the first failing step.

import { createRequire } from "node:module";
import { join } from "node:path";
import process from "node:process";

const env = process.env;
const nodeDir = env.LECTERN_NODE_DIR || join(env.LECTERN_CACHE || "/var/cache/lectern", "node");
const require = createRequire(join(nodeDir, "package.json"));
const { chromium } = require("playwright-core");

const cfg = {
  api: env.LECTERN_API_URL,
  token: env.LECTERN_TOKEN,
  courseId: env.LECTERN_COURSE_ID,
  sectionId: env.LECTERN_SECTION_ID,
};
const pageUrl = env.LECTERN_PAGE_URL;
for (const [name, value] of Object.entries({ LECTERN_API_URL: cfg.api, LECTERN_TOKEN: cfg.token, LECTERN_PAGE_URL: pageUrl })) {
  if (!value) {
    console.error(`${name} is not set`);
    process.exit(2);
  }
}

// No background traffic: the machine's network is closed, and the test needs none of it.
const args = [
  "--autoplay-policy=no-user-gesture-required",
  "--mute-audio",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
// Chromium's sandbox cannot run as root (CI runs as root).
if (process.getuid && process.getuid() === 0) args.push("--no-sandbox");
const browser = await chromium.launch({
  executablePath: env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args,
});
const result = { steps: [] };
let failed = false;
try {
  const page = await browser.newPage();
  page.on("console", (m) => console.log(`[page ${m.type()}] ${m.text()}`));
  page.on("pageerror", (e) => console.log(`[page error] ${e.message}`));
  page.on("requestfailed", (r) => console.log(`[request failed] ${r.method()} ${r.url()}: ${r.failure()?.errorText}`));
  await page.goto(new URL("/page.html", pageUrl).href);

  // One step: a function of window.Lectern called in the page, timed and recorded.
  const step = async (name, fn, ...fnArgs) => {
    const started = Date.now();
    try {
      const value = await page.evaluate(
        ([fn, cfg, fnArgs]) => window.Lectern[fn](cfg, ...fnArgs),
        [fn, cfg, fnArgs],
      );
      result.steps.push({ name, ms: Date.now() - started, value });
      console.log(`ok   ${name} (${Date.now() - started} ms): ${JSON.stringify(value)}`);
      return value;
    } catch (e) {
      result.steps.push({ name, ms: Date.now() - started, error: String(e.message || e) });
      console.log(`FAIL ${name}: ${e.message || e}`);
      throw e;
    }
  };

  const uploads = async () => {
    const single = await step("presigned PUT upload", "upload", "single.mp4", "video/mp4", "put");
    const multi = await step("multipart upload", "upload", "multi.mp4", "video/mp4", "multipart", {
      course_id: cfg.courseId,
      section_id: cfg.sectionId,
    });
    result.single = single;
    result.multi = multi;
    return [single, multi];
  };

  const playBoth = async ([single, multi]) => {
    await step("single ready", "waitReady", single.id);
    await step("multipart ready", "waitReady", multi.id);
    result.playedSingle = await step("play the single-PUT video", "playOwn", single.id);
    result.playedMulti = await step("play every rendition of the multipart video", "playOwn", multi.id, true);
  };

  const visitorPreview = async (lesson) => {
    result.preview = await step("visitor plays the preview lesson", "visitorPlaysPreview", lesson.id);
  };

  const visitorThumbnail = async () => {
    result.thumbnail = await step("visitor sees the catalogue thumbnail", "visitorSeesThumbnail");
  };

  const videos = await uploads();
  await playBoth(videos);
  await visitorPreview(videos[1]);
  await visitorThumbnail();
} catch (e) {
  failed = true;
  result.error = String(e.message || e);
} finally {
  await browser.close();
}
console.log(`RESULT ${JSON.stringify(result)}`);
process.exit(failed ? 1 : 0);
