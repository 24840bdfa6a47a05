FROM busybox
ENV LEGACY value with   spaces
ENV ONE=1 TWO="two words" THREE='single $ONE' FOUR=a\ b FIVE=
ENV DERIVED=${ONE}${TWO:+-has-two} NOT_SEEN=$SIX SIX=6
ENV ESCAPED=\$ONE QUOTED="$ONE \"q\""
LABEL multi.line="a" \
      other="b c"
LABEL legacy label with spaces
