// Loads a page in headless Chromium (Debian's, driven by playwright-core)
// and waits for it to report: the web page example calls a capwire server
// with the npm capnweb client.
// Usage: node check.mjs URL   (CHROMIUM=/path/to/chromium to choose the browser)
import { chromium } from "playwright-core";

const [url] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
try {
  const page = await browser.newPage();
  page.on("console", (m) => console.log(`console: ${m.text()}`));
  page.on("pageerror", (e) => console.log(`page error: ${e}`));
  await page.goto(url);
  await page.waitForFunction(
    () => document.title === "done" || document.title === "failed",
    null,
    { timeout: 20000 },
  );
  const text = await page.textContent("#log");
  console.log(text);
  const want = [
    "square(12) = 144",
    "makeCounter(5).increment(1) = 6",
    'greetWith(shout, "browser") = HELLO, BROWSER!',
    "done",
  ];
  const missing = want.filter((line) => !text.includes(line));
  if (missing.length > 0) {
    console.log(`FAIL: missing ${JSON.stringify(missing)}`);
    process.exitCode = 1;
  }
} finally {
  await browser.close();
}
