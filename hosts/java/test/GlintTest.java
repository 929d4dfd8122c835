import com.glint.GenerateParams;
import com.glint.Glint;
import com.glint.GlintException;
import com.glint.Model;
import com.glint.Session;
import com.glint.Stats;
import java.io.FileInputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicReference;

/**
 * The JNI binding from a real JVM (run by hosts/tests/jvm.rs):
 * java -Djava.library.path=DIR GlintTest MODEL TRUNCATED PROMPT N_TOKENS EXPECTED_FILE
 * Exits non-zero with a message at the first failure.
 */
public final class GlintTest {
    static void check(boolean ok, String what) {
        if (!ok) {
            throw new AssertionError(what);
        }
    }

    interface Body {
        void run() throws Exception;
    }

    /** {@code body} throws a GlintException with {@code code}; returns it. */
    static GlintException throwsGlint(int code, String what, Body body) throws Exception {
        try {
            body.run();
        } catch (GlintException e) {
            check(e.code() == code, what + ": code " + e.code() + " (" + e.getMessage() + ")");
            check(e.getMessage() != null && !e.getMessage().isEmpty(), what + ": no message");
            return e;
        }
        throw new AssertionError(what + ": no GlintException");
    }

    static String answer(Session s, String prompt, int tokens) {
        StringBuilder out = new StringBuilder();
        Stats st = s.generate(prompt, GenerateParams.greedy(tokens), t -> {
            out.append(t);
            return true;
        });
        check(st.generatedTokens > 0, "no tokens");
        return out.toString();
    }

    @SuppressWarnings("try") // the model is closed inside its try block on purpose
    public static void main(String[] args) throws Exception {
        String modelPath = args[0], truncated = args[1], prompt = args[2];
        int tokens = Integer.parseInt(args[3]);
        String expected = new String(Files.readAllBytes(Paths.get(args[4])), StandardCharsets.UTF_8);
        check(!Glint.version().isEmpty(), "version");

        throwsGlint(GlintException.IO, "missing file",
                () -> Glint.load("/nonexistent/model.glint", null));
        throwsGlint(GlintException.BAD_MODEL, "truncated file", () -> Glint.load(truncated, null));
        throwsGlint(GlintException.NULL_ARGUMENT, "null path", () -> Glint.load((String) null, null));

        List<Float> progress = new ArrayList<>();
        Glint.Options options = new Glint.Options();
        options.threads = 2;
        options.progress = progress::add;
        try (Model model = Glint.load(modelPath, options)) {
            check(progress.size() >= 2 && progress.get(progress.size() - 1) == 1.0f,
                    "progress " + progress);

            // The greedy answer, streamed, equals `glint run --temp 0`'s.
            try (Session s = model.session(0)) {
                String got = answer(s, prompt, tokens);
                check(got.equals(expected), "greedy answer '" + got + "' != '" + expected + "'");

                // Callbacks: null, throwing, stopping.
                s.reset();
                throwsGlint(GlintException.NULL_ARGUMENT, "null callback",
                        () -> s.generate(prompt, null, null));
                IllegalStateException boom = new IllegalStateException("boom");
                GlintException e = throwsGlint(GlintException.CALLBACK, "throwing callback",
                        () -> s.generate(prompt, GenerateParams.greedy(8), t -> {
                            throw boom;
                        }));
                check(e.getCause() == boom, "the callback's exception is the cause");
                s.reset();
                Stats st = s.generate(prompt, GenerateParams.greedy(8), t -> false);
                check(st.generatedTokens == 1 && st.stopReason == Stats.StopReason.CANCELLED,
                        "stop from the callback: " + st);

                // Cancel from another Java thread stops within one decode step.
                s.reset();
                CountDownLatch firstToken = new CountDownLatch(1);
                CountDownLatch cancelled = new CountDownLatch(1);
                Thread canceller = new Thread(() -> {
                    try {
                        firstToken.await();
                    } catch (InterruptedException ie) {
                        return;
                    }
                    s.cancel();
                    cancelled.countDown();
                });
                canceller.start();
                int[] seen = {0};
                st = s.chat("Tell me a long story about a dragon.", GenerateParams.greedy(64), t -> {
                    seen[0]++;
                    firstToken.countDown();
                    try {
                        cancelled.await();
                    } catch (InterruptedException ie) {
                        return false;
                    }
                    return true;
                });
                firstToken.countDown(); // releases the canceller if no text came
                canceller.join();
                check(st.stopReason == Stats.StopReason.CANCELLED && st.generatedTokens == 1
                        && seen[0] == 1, "cancel from a thread: " + st);

                // A context too small for the prompt.
                try (Session tiny = model.session(4)) {
                    throwsGlint(GlintException.PROMPT_TOO_LONG, "tiny context",
                            () -> tiny.generate(prompt, null, t -> true));
                }

                // A chat turn.
                s.reset();
                st = s.chat("Hi!", GenerateParams.greedy(2), t -> true);
                check(st.generatedTokens > 0, "chat");
            }

            // Closed sessions and models.
            Session closed = model.session(64);
            closed.close();
            closed.close();
            closed.cancel();
            throwsGlint(GlintException.INVALID_HANDLE, "closed session",
                    () -> closed.generate(prompt, null, t -> true));

            // 4 threads, each with its own session on the one model: the answers alone.
            String[] prompts = {"The capital of France is", "Water is made of",
                "The largest planet is", "A cat is a"};
            String[] alone = new String[prompts.length];
            for (int i = 0; i < prompts.length; i++) {
                try (Session s = model.session(256)) {
                    alone[i] = answer(s, prompts[i], tokens);
                }
            }
            String[] together = new String[prompts.length];
            AtomicReference<Throwable> failure = new AtomicReference<>();
            List<Thread> threads = new ArrayList<>();
            for (int i = 0; i < prompts.length; i++) {
                final int k = i;
                Thread t = new Thread(() -> {
                    try (Session s = model.session(256)) {
                        together[k] = answer(s, prompts[k], tokens);
                    } catch (Throwable x) {
                        failure.set(x);
                    }
                });
                threads.add(t);
                t.start();
            }
            for (Thread t : threads) {
                t.join();
            }
            if (failure.get() != null) {
                throw new AssertionError("a thread failed", failure.get());
            }
            for (int i = 0; i < prompts.length; i++) {
                check(alone[i].equals(together[i]),
                        "thread " + i + ": '" + together[i] + "' alone: '" + alone[i] + "'");
            }

            // A session outlives its model's handle; a closed model refuses new sessions.
            Session last = model.session(64);
            model.close();
            throwsGlint(GlintException.INVALID_HANDLE, "closed model", () -> model.session(64));
            check(answer(last, prompt, 2).length() > 0, "session after the model's close");
            last.close();
        }

        // A memory budget too small for any session.
        Glint.Options small = new Glint.Options();
        small.memBudget = 1 << 20;
        try (Model m = Glint.load(modelPath, small)) {
            throwsGlint(GlintException.OVER_BUDGET, "over budget", () -> m.session(0));
        }

        // The GPU choice in a library without the `gpu` feature (hosts/tests/gpu.rs runs
        // it in one with the feature).
        if (!Boolean.getBoolean("glint.gpu")) {
            Glint.Options gpu = new Glint.Options();
            gpu.backend = Glint.Backend.GPU;
            gpu.gpuCacheDir = System.getProperty("java.io.tmpdir");
            throwsGlint(GlintException.NO_GPU, "GPU", () -> Glint.load(modelPath, gpu));
        }

        // A model from a FileDescriptor.
        try (FileInputStream in = new FileInputStream(modelPath)) {
            long size = in.getChannel().size();
            try (Model m = Glint.load(in.getFD(), 0, size, null); Session s = m.session(64)) {
                check(answer(s, prompt, 2).length() > 0, "fd model");
            }
            throwsGlint(GlintException.BAD_MODEL, "range past the end",
                    () -> Glint.load(in.getFD(), 1, size, null));
        }
        System.out.println("GlintTest: all checks passed");
    }
}
