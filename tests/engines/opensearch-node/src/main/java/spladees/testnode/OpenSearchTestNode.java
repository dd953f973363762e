package spladees.testnode;

import java.io.IOException;
import java.io.InputStream;
import java.io.PrintStream;
import java.io.UncheckedIOException;
import java.lang.reflect.Constructor;
import java.lang.reflect.ParameterizedType;
import java.lang.reflect.Type;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collection;
import java.util.Collections;
import java.util.Comparator;
import java.util.List;
import java.util.ServiceLoader;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.stream.Stream;

import org.opensearch.Version;
import org.opensearch.common.logging.LogConfigurator;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.http.HttpServerTransport;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.plugins.ExtensiblePlugin;
import org.opensearch.plugins.Plugin;
import org.opensearch.plugins.PluginInfo;
import org.opensearch.plugins.PluginsService;

/**
 * Starts one OpenSearch node inside this JVM for splade-es integration tests.
 *
 * <p>Usage: {@code OpenSearchTestNode <home-dir> [http-port] [--delete-home]} (port 0 or absent:
 * any free port; {@code --delete-home}: remove the home directory once the node is closed, so a
 * parent killed with SIGKILL leaves no data behind). Binds 127.0.0.1 only.
 *
 * <p>When the node is started it prints exactly one line to stdout,
 * {@code OPENSEARCH_NODE_READY http://127.0.0.1:<port>}; everything else goes to stderr or to
 * {@code <home>/logs/}. The node stops when stdin reaches EOF, so it dies with the process that
 * started it, and on SIGTERM / SIGINT.
 *
 * <p>The same source compiles against OpenSearch 2.19 and 3.x: the only API difference it meets
 * (the protected {@code Node} constructor takes plugin classes in 2.x and {@code PluginInfo}s in
 * 3.x) is bridged by reflection, and module plugin classes are looked up by their 2.x and 3.x
 * names.
 */
public final class OpenSearchTestNode {

    /**
     * Modules every node needs: name, then the plugin class in 3.x, then in 2.x (3.0 renamed
     * them to *ModulePlugin).
     */
    private static final String[][] REQUIRED_MODULES = {
        {"transport-netty4",
            "org.opensearch.transport.Netty4ModulePlugin",
            "org.opensearch.transport.Netty4Plugin"},
        {"mapper-extras", // rank_features, rank_feature
            "org.opensearch.index.mapper.MapperExtrasModulePlugin",
            "org.opensearch.index.mapper.MapperExtrasPlugin"},
        {"analysis-common",
            "org.opensearch.analysis.common.CommonAnalysisModulePlugin",
            "org.opensearch.analysis.common.CommonAnalysisPlugin"},
        {"lang-painless",
            "org.opensearch.painless.PainlessModulePlugin",
            "org.opensearch.painless.PainlessPlugin"},
        {"reindex",
            "org.opensearch.index.reindex.ReindexModulePlugin",
            "org.opensearch.index.reindex.ReindexPlugin"},
        {"ingest-common", // script, remove, set ... processors (splade-es register's pipeline)
            "org.opensearch.ingest.common.IngestCommonModulePlugin",
            "org.opensearch.ingest.common.IngestCommonPlugin"},
    };

    private static final String ML_COMMONS_PLUGIN = "org.opensearch.ml.plugin.MachineLearningPlugin";

    /**
     * Plugins loaded only when their jars are on the classpath (not every version has them), in
     * this order: a plugin another one extends comes first, as in a distribution.
     */
    private static final String[][] OPTIONAL_PLUGINS = {
        {"opensearch-job-scheduler", "org.opensearch.jobscheduler.JobSchedulerPlugin"},
        {"opensearch-ml", ML_COMMONS_PLUGIN},
        {"opensearch-neural-search", "org.opensearch.neuralsearch.plugin.NeuralSearch"},
    };

    /**
     * Extensible plugins that get their SPI extensions from the classpath after the node is built.
     * On 2.x the PluginsService gives classpath plugins no extended plugins, so it calls their
     * {@code loadExtensions} with nothing; job-scheduler keeps the providers it is handed in maps
     * that its sweeper reads only once the node runs, so a second call before {@code start()}
     * registers ml-commons' {@code MLBatchTaskUpdateExtension} (batch-predict status polling).
     * Not every extensible plugin tolerates a late call (painless compiles its whitelists in
     * {@code createComponents}), hence this list.
     */
    private static final String[] LATE_EXTENSION_TARGETS = {"org.opensearch.jobscheduler.JobSchedulerPlugin"};

    private static final String READY_PREFIX = "OPENSEARCH_NODE_READY ";

    private OpenSearchTestNode() {}

    public static void main(String[] args) throws Exception {
        // Keep stdout for the READY line alone: anything else printing to System.out (log4j's
        // default console appender before it is configured, libraries) lands on stderr.
        final PrintStream stdout = new PrintStream(System.out, true, StandardCharsets.UTF_8);
        System.setOut(System.err);

        final List<String> positional = new ArrayList<>();
        boolean deleteHome = false;
        for (String arg : args) {
            if (arg.equals("--delete-home")) {
                deleteHome = true;
            } else {
                positional.add(arg);
            }
        }
        if (positional.isEmpty() || positional.size() > 2) {
            System.err.println("usage: OpenSearchTestNode <home-dir> [http-port] [--delete-home]");
            System.exit(2);
        }
        final Path home = Paths.get(positional.get(0)).toAbsolutePath();
        final String httpPort = positional.size() == 2 ? positional.get(1) : "0";
        final boolean removeHome = deleteHome;

        final Node node = createNode(home, httpPort);
        loadLateExtensions(node);
        final AtomicBoolean closed = new AtomicBoolean();
        final AtomicBoolean ready = new AtomicBoolean();
        final Runnable shutdown = () -> {
            if (closed.compareAndSet(false, true)) {
                try {
                    node.close();
                    node.awaitClose(30, TimeUnit.SECONDS);
                } catch (IOException | InterruptedException e) {
                    e.printStackTrace();
                }
                // Only after a successful start: a failed start keeps its logs for the parent.
                if (removeHome && ready.get()) {
                    deleteRecursively(home);
                }
            }
        };
        // SIGTERM / SIGINT run the hooks; a plain exit after stdin EOF runs them too.
        Runtime.getRuntime().addShutdownHook(new Thread(shutdown, "test-node-shutdown"));

        node.start();
        final HttpServerTransport http = node.injector().getInstance(HttpServerTransport.class);
        final int port = http.boundAddress().publishAddress().getPort();
        ready.set(true);
        stdout.println(READY_PREFIX + "http://127.0.0.1:" + port);
        stdout.flush();

        // Block until the parent closes our stdin (or dies, which closes it too).
        final InputStream in = System.in;
        final byte[] sink = new byte[256];
        while (in.read(sink) >= 0) {
            // input is ignored; only EOF matters
        }
        shutdown.run();
        System.exit(0);
    }

    private static Node createNode(Path home, String httpPort) throws Exception {
        final Path config = home.resolve("config");
        for (String dir : new String[] {"config", "data", "logs", "plugins", "modules"}) {
            // PluginsService scans plugins/ and modules/ and fails when they are missing.
            Files.createDirectories(home.resolve(dir));
        }
        copyResource("log4j2.properties", config.resolve("log4j2.properties"));
        if (!Files.exists(config.resolve("opensearch.yml"))) {
            Files.write(config.resolve("opensearch.yml"), new byte[0]);
        }

        final List<Class<? extends Plugin>> plugins = loadPlugins();
        final Settings.Builder settings = Settings.builder()
            .put("path.home", home.toString())
            .put("path.data", home.resolve("data").toString())
            .put("path.logs", home.resolve("logs").toString())
            .put("cluster.name", "splade-es-test")
            .put("node.name", "test-node")
            .put("discovery.type", "single-node")
            .put("network.host", "127.0.0.1")
            .put("http.port", httpPort)
            .put("transport.port", "0")
            // Test machines often have full-ish disks; watermarks would block shard allocation.
            .put("cluster.routing.allocation.disk.threshold_enabled", false)
            // No swapping concerns for a throwaway node.
            .put("bootstrap.memory_lock", false);
        if (plugins.stream().anyMatch(cls -> cls.getName().equals(ML_COMMONS_PLUGIN))) {
            putMlCommonsSettings(settings);
        }
        final Environment env = InternalSettingsPreparer.prepareEnvironment(
            settings.build(), Collections.emptyMap(), config, () -> "test-node");
        LogConfigurator.configure(env);
        return newNode(env, plugins);
    }

    /**
     * ml-commons' own circuit breakers, off for the same reason as the disk watermarks: they
     * judge the test machine, not the code under test. Register, deploy and every predict (remote
     * models included: MLTaskRunner.dispatchTask checks them when the task runs locally, 2.19.6.0)
     * fail with "... Circuit Breaker is open" while one is open: the disk one below 5 GB free on
     * the data path, the JVM one above 85% heap used, which a 1 GB heap can reach between two GCs.
     * Both are dynamic cluster settings too. Nothing else is set here: remote models may run on
     * data nodes by default (plugins.ml_commons.task_dispatcher.eligible_node_role.remote_model is
     * [data, ml]; only_run_on_ml_node governs local models only), and the connector endpoint
     * settings (trusted_connector_endpoints_regex, connector.private_ip_enabled) are left to the
     * tests and the product, which set them through the cluster settings API.
     */
    private static void putMlCommonsSettings(Settings.Builder settings) {
        settings
            .put("plugins.ml_commons.disk_free_space_threshold", "0b")
            // MemoryCircuitBreaker.isOpen is false when the threshold is 100.
            .put("plugins.ml_commons.jvm_heap_memory_threshold", 100);
    }

    /** Finds the plugin classes to load: all required modules, plus optional ones present. */
    private static List<Class<? extends Plugin>> loadPlugins() {
        final List<Class<? extends Plugin>> plugins = new ArrayList<>();
        for (String[] module : REQUIRED_MODULES) {
            final Class<? extends Plugin> found = findClass(module);
            if (found == null) {
                throw new IllegalStateException("module " + module[0] + " is not on the classpath");
            }
            plugins.add(found);
        }
        for (String[] plugin : OPTIONAL_PLUGINS) {
            final Class<? extends Plugin> found = findClass(plugin);
            if (found != null) {
                plugins.add(found);
            } else {
                System.err.println("[test-node] optional plugin " + plugin[0] + " not on the classpath, skipped");
            }
        }
        return plugins;
    }

    private static Class<? extends Plugin> findClass(String[] entry) {
        for (int i = 1; i < entry.length; i++) {
            try {
                // Not initialised here: plugins' static loggers would start log4j with its
                // classpath default before LogConfigurator has set the node's log paths.
                return Class.forName(entry[i], false, OpenSearchTestNode.class.getClassLoader())
                    .asSubclass(Plugin.class);
            } catch (ClassNotFoundException e) {
                // try the next name
            }
        }
        return null;
    }

    /** Friendly plugin name (what _cat/plugins shows on 3.x) for a plugin class. */
    private static String pluginName(Class<? extends Plugin> cls) {
        for (String[][] table : new String[][][] {REQUIRED_MODULES, OPTIONAL_PLUGINS}) {
            for (String[] entry : table) {
                for (int i = 1; i < entry.length; i++) {
                    if (entry[i].equals(cls.getName())) {
                        return entry[0];
                    }
                }
            }
        }
        return cls.getName();
    }

    /**
     * Calls the protected {@code Node(Environment, Collection<?> classpathPlugins, boolean)}
     * constructor, passing plugin classes (2.x) or {@code PluginInfo}s (3.x) as it expects.
     */
    private static Node newNode(Environment env, List<Class<? extends Plugin>> plugins) throws Exception {
        final Constructor<Node> ctor =
            Node.class.getDeclaredConstructor(Environment.class, Collection.class, boolean.class);
        ctor.setAccessible(true);
        final Type elementType = ((ParameterizedType) ctor.getGenericParameterTypes()[1]).getActualTypeArguments()[0];
        final List<Object> classpathPlugins = new ArrayList<>();
        for (Class<? extends Plugin> cls : plugins) {
            if (elementType == PluginInfo.class) {
                classpathPlugins.add(
                    new PluginInfo(
                        pluginName(cls),
                        "classpath plugin",
                        "NA",
                        Version.CURRENT,
                        Integer.toString(Runtime.version().feature()),
                        cls.getName(),
                        null,
                        Collections.emptyList(),
                        false
                    )
                );
            } else {
                classpathPlugins.add(cls);
            }
        }
        // forbidPrivateIndexSettings=true: behave like a production node.
        return ctor.newInstance(env, classpathPlugins, true);
    }

    /** See {@link #LATE_EXTENSION_TARGETS}. */
    private static void loadLateExtensions(Node node) {
        final PluginsService plugins = node.injector().getInstance(PluginsService.class);
        final ClassLoader loader = OpenSearchTestNode.class.getClassLoader();
        for (ExtensiblePlugin plugin : plugins.filterPlugins(ExtensiblePlugin.class)) {
            if (Arrays.asList(LATE_EXTENSION_TARGETS).contains(plugin.getClass().getName())) {
                plugin.loadExtensions(new ExtensiblePlugin.ExtensionLoader() {
                    @Override
                    public <T> List<T> loadExtensions(Class<T> extensionPointType) {
                        final List<T> found = new ArrayList<>();
                        ServiceLoader.load(extensionPointType, loader).forEach(found::add);
                        return found;
                    }
                });
            }
        }
    }

    private static void deleteRecursively(Path root) {
        try (Stream<Path> paths = Files.walk(root)) {
            // Deepest first, so directories are empty when their turn comes.
            paths.sorted(Comparator.reverseOrder()).forEach(path -> path.toFile().delete());
        } catch (IOException | UncheckedIOException e) {
            System.err.println("[test-node] could not delete " + root + ": " + e);
        }
    }

    private static void copyResource(String name, Path target) throws IOException {
        try (InputStream in = OpenSearchTestNode.class.getResourceAsStream("/" + name)) {
            if (in == null) {
                throw new IOException("resource " + name + " missing from the launcher build");
            }
            Files.copy(in, target, StandardCopyOption.REPLACE_EXISTING);
        }
    }
}
