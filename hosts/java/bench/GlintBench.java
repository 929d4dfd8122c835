import com.glint.GenerateParams;
import com.glint.Glint;
import com.glint.Model;
import com.glint.Session;
import com.glint.Stats;
import java.util.Arrays;

/**
 * Per-token time of a greedy chat answer through JNI (hosts/examples/host_bench.rs
 * measures the Rust API and the C ABI on the same prompt and settings):
 * java -Djava.library.path=target/release -cp CLASSES GlintBench MODEL [THREADS]
 */
public final class GlintBench {
    public static void main(String[] args) {
        String prompt = "Tell me a long story about a dragon who learns to fly.";
        int tokens = 64, reps = 5;
        Glint.Options options = new Glint.Options();
        options.threads = args.length > 1 ? Integer.parseInt(args[1]) : 2;
        double[] ms = new double[reps];
        long generated = 0;
        try (Model model = Glint.load(args[0], options)) {
            for (int i = 0; i < reps; i++) {
                try (Session s = model.session(0)) {
                    int[] pieces = {0};
                    long t = System.nanoTime();
                    Stats st = s.chat(prompt, GenerateParams.greedy(tokens), text -> {
                        pieces[0]++;
                        return true;
                    });
                    ms[i] = (System.nanoTime() - t) / 1e6 / st.generatedTokens;
                    generated = st.generatedTokens;
                }
            }
        }
        Arrays.sort(ms);
        System.out.printf("per token, %d threads, %d-token greedy generation, median of %d: "
                + "JNI %.3f ms (%d tokens)%n", options.threads, tokens, reps, ms[reps / 2],
                generated);
    }
}
