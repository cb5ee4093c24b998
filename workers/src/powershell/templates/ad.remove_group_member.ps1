$group = Get-ADGroup @StewardAd -Identity ([string]$p.group)
$user = Get-StewardAdUser -Identity ([string]$p.member)
$isMember = @($user.MemberOf | ForEach-Object { [string]$_ }) -contains [string]$group.DistinguishedName
$StewardPrior = [ordered]@{ member = $isMember }
$result = [ordered]@{ group = [string]$group.DistinguishedName; member = [string]$user.DistinguishedName }
if (-not $isMember) {
    return (Out-StewardResult -Status 'unchanged' -Result $result -Prior $StewardPrior)
}
Remove-ADGroupMember @StewardAd -Identity ([string]$group.DistinguishedName) -Members ([string]$user.DistinguishedName) -Confirm:$false
return (Out-StewardResult -Status 'changed' -Result $result -Prior $StewardPrior)
