// The ACLs of model-trainer's tenants, created with Kafka's own Admin API (the broker's jars
// hold no kafka-acls tool). Run by deploy/local_kafka.py as a single-file source program:
//   java -cp '<libs>/*' TenantAcls.java <bootstrap> <commands_topic> <read,topics> <tenant>...
// Tenant T may write and describe <commands_topic>.T, and read and describe each of the
// comma-separated read topics (the events and state topics): nothing else (no other topic,
// no consumer group, no cluster operation).
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class TenantAcls {
    static AclBinding allow(String topic, String principal, AclOperation operation) {
        return new AclBinding(
            new ResourcePattern(ResourceType.TOPIC, topic, PatternType.LITERAL),
            new AccessControlEntry(principal, "*", operation, AclPermissionType.ALLOW));
    }

    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.put("bootstrap.servers", args[0]);
        List<AclBinding> acls = new ArrayList<>();
        for (int i = 3; i < args.length; i++) {
            String principal = "User:" + args[i];
            String commands = args[1] + "." + args[i];
            acls.add(allow(commands, principal, AclOperation.WRITE));
            acls.add(allow(commands, principal, AclOperation.DESCRIBE));
            for (String topic : args[2].split(",")) {
                acls.add(allow(topic, principal, AclOperation.READ));
                acls.add(allow(topic, principal, AclOperation.DESCRIBE));
            }
        }
        try (Admin admin = Admin.create(props)) {
            admin.createAcls(acls).all().get();
        }
        for (AclBinding acl : acls) {
            System.out.println(acl);
        }
    }
}
