#include <stdio.h>
#include <string.h>

#include "../src/greet.h"

static int failures;

static void expect(const char *name, const char *want)
{
    char got[64];

    greet(got, sizeof got, name);
    if (strcmp(got, want) != 0) {
        printf("FAIL greet(%s): got \"%s\", want \"%s\"\n", name ? name : "NULL", got, want);
        failures++;
    } else {
        printf("ok   greet(%s)\n", name ? name : "NULL");
    }
}

int main(void)
{
    char small[8];

    expect("Ada", "Hello, Ada!");
    expect("", "Hello, world!");
    expect(NULL, "Hello, world!");

    if (greet(small, sizeof small, "Grace") != 13 || strlen(small) != 7) {
        printf("FAIL truncation: greet must report the full length and stay in bounds\n");
        failures++;
    } else {
        printf("ok   truncation\n");
    }

    printf("%d failure(s)\n", failures);
    return failures != 0;
}
