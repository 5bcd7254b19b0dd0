// What every end-to-end script shares: a check that throws, and a runner that prints the
// script's one JSON summary line and sets the exit code from summary.ok.

export function check(condition, message) {
  if (!condition) throw new Error(message);
}

export async function run(main, summary) {
  try {
    await main();
  } catch (error) {
    summary.error = `${error?.constructor?.name ?? 'Error'}: ${error?.message ?? error}`;
    if (error?.status !== undefined) summary.error_status = error.status;
  }
  console.log(JSON.stringify(summary));
  process.exitCode = summary.ok ? 0 : 1;
}
